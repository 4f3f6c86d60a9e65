# Training: one rule, `train`, one job per cell and method training every seed (docs/architecture.md, "Job
# granularity"): the features are read once and the ~3 s start-up of a PyTorch process is paid once per method,
# not once per seed. One named rule per stage, so a profile or the command line can address it
# (`--set-resources train:mem_mb=16000`, `--allowed-rules train`); the SLURM profile packs its jobs in groups.
# A cell whose training would repeat another's (models_from: the synthetic ood cell) is scored, rule `score`.

rule feature_manifest:
    """One file standing for a cell's feature files (wsimil.features.store.write_manifest): the train, score,
    evaluate and geojson jobs take it instead of a list of every slide's file."""
    input:
        cell_features,
    output:
        f"{OUT}/manifests/{{cell}}.tsv",
    wildcard_constraints:
        cell=_alternatives(CELLS),
    log:
        f"{LOGS}/manifests/{{cell}}.log",
    localrule: True
    run:
        from wsimil.features.store import write_manifest

        write_manifest(list(input), output[0])


rule train:
    input:
        unpack(_cell_inputs),
    output:
        _run_outputs(),
    wildcard_constraints:
        cell=_alternatives(TRAINED_CELLS),
        method=_alternatives(list_methods()),
    params:
        plugins=PLUGIN_ARGS,
        features=get_input_dir,
        out=lambda w: f"{OUT}/runs/{w.cell}/{w.method}/seed{{seed}}",  # the CLI fills in the seed
        seeds=" ".join(map(str, SEEDS)),
        overrides=_train_overrides,
        device=config["training"]["device"],
        precision=config["training"]["precision"],
    threads: config["training"]["threads"]
    log:
        f"{LOGS}/train/{{cell}}/{{method}}.log",
    benchmark:
        f"{BENCH}/train/{{cell}}/{{method}}.tsv"
    group:
        "train"
    resources:
        mem_mb=mem_mb(8000),
        runtime=240,
        gpu=gpus("training"),
        gres=gres("training"),
    conda:
        conda_env("training")
    shell:
        "wsimil {params.plugins} train --features {params.features} --slides {input.sheet:q} --method {wildcards.method}"
        " --seed {params.seeds} --out {params.out:q} --overrides-per-method {params.overrides:q}"
        " --experiment {wildcards.cell} --device {params.device} --precision {params.precision}"
        " --threads {threads} --no-progress 2> {log}"


rule score:
    input:
        unpack(_cell_inputs),
        runs=_source_runs,
    output:
        _run_outputs(),
    wildcard_constraints:
        cell=_alternatives(SCORED_CELLS),
        method=_alternatives(list_methods()),
    params:
        plugins=PLUGIN_ARGS,
        features=get_input_dir,
        runs=lambda w: " ".join(shlex.quote(run_dir(models_from(w.cell), _check_method(w), s)) for s in SEEDS),
        outs=lambda w: " ".join(shlex.quote(run_dir(w.cell, w.method, s)) for s in SEEDS),
    threads: config["training"]["threads"]
    log:
        f"{LOGS}/train/{{cell}}/{{method}}.log",
    benchmark:
        f"{BENCH}/train/{{cell}}/{{method}}.tsv"
    group:
        "train"
    resources:
        mem_mb=mem_mb(8000),
        runtime=60,
    conda:
        conda_env()
    shell:
        "wsimil {params.plugins} score --run {params.runs} --features {params.features} --slides {input.sheet:q}"
        " --out {params.outs} --experiment {wildcards.cell} --threads {threads} 2> {log}"


rule ood_sheet:
    input:
        sheet=SHEET_PATH,
        external=[EXTERNAL_SHEET_PATH] if EXTERNAL_SHEET_PATH else [],
    output:
        OOD_SHEET,
    params:
        centers=" ".join(map(str, config["ood"]["train_centers"] or [])),
        external=f"--external {shlex.quote(EXTERNAL_SHEET_PATH)}" if EXTERNAL_SHEET_PATH else "",
    log:
        f"{LOGS}/ood_sheet.log",
    conda:
        "../envs/wsimil.yaml"
    shell:
        "wsimil ood-sheet --sheet {input.sheet:q} {params.external} --train-centers {params.centers}"
        " --out {output:q} 2> {log}"
