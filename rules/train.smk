# Training: one rule, `train`, one job per cell and method training every seed (docs/architecture.md, "Job
# granularity"): the features are read once and the ~3 s start-up of a PyTorch process is paid once per method,
# not once per seed. One named rule per stage, so a profile or the command line can address it
# (`--set-resources train:mem_mb=16000`, `--allowed-rules train`); the SLURM profile packs its jobs in groups.
# A cell whose training would repeat another's (models_from: the synthetic ood cell) is scored, rule `score`.

rule feature_manifest:
    """One file standing for the feature files of a feature set (wsimil.features.store.write_manifest; one per
    features x sheet, shared by the cells on it): the train, score, evaluate, geojson and report jobs read the
    features through it (`--features <manifest>`) instead of taking a list of every slide's file."""
    input:
        set_features,
    output:
        f"{OUT}/manifests/{{feature_set}}.tsv",
    wildcard_constraints:
        feature_set=_alternatives(FEATURE_SETS),
    log:
        f"{LOGS}/manifests/{{feature_set}}.log",
    localrule: True
    run:
        from wsimil.features.store import write_manifest

        write_manifest(cell_feature_files(FEATURE_SETS[wildcards.feature_set]), output[0])


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
        out=run_dir_template,
        seeds=" ".join(map(str, SEEDS)),
        overrides=_train_overrides,
        device=config["training"]["device"],
        precision=config["training"]["precision"],
    threads: config["training"]["threads"]
    log:
        f"{LOGS}/train/{{cell}}/{{method}}.log",
    benchmark:
        f"{BENCH}/train/{{cell}}/{{method}}.tsv"
    resources:
        mem_mb=mem_mb(8000),
        runtime=240,
        gpu=gpus("training"),
        gres=gres("training"),
    conda:
        conda_env("training")
    shell:
        "wsimil {params.plugins} train --features {input.features:q} --slides {input.sheet:q} --method {wildcards.method}"
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
        runs=quoted_source_run_dirs,
        outs=quoted_run_dirs,
    threads: config["training"]["threads"]
    log:
        f"{LOGS}/train/{{cell}}/{{method}}.log",
    benchmark:
        f"{BENCH}/train/{{cell}}/{{method}}.tsv"
    resources:
        mem_mb=mem_mb(8000),
        runtime=60,
    conda:
        conda_env()
    shell:
        "wsimil {params.plugins} score --run {params.runs} --features {input.features:q} --slides {input.sheet:q}"
        " --out {params.outs} --experiment {wildcards.cell} --threads {threads} 2> {log}"


rule cell_sheet:
    """The sample sheet an experiment derives from the main one for its cells (ood: the held-out hospitals' slides
    become the test slides; a plugin's trial): wsimil.experiments.Experiment.sheet, by the experiment's name."""
    input:
        sheet=SHEET_PATH,
        external=[EXTERNAL_SHEET_PATH] if EXTERNAL_SHEET_PATH else [],
    output:
        f"{OUT}/data/slides_{{sheet}}.csv",
    wildcard_constraints:
        sheet=_alternatives(DERIVED_SHEETS),
    params:
        plugins=PLUGIN_ARGS,
        section=derived_sheet_section,
        external=f"--external {shlex.quote(EXTERNAL_SHEET_PATH)}" if EXTERNAL_SHEET_PATH else "",
    log:
        f"{LOGS}/cell_sheet/{{sheet}}.log",
    conda:
        "../envs/wsimil.yaml"
    shell:
        "wsimil {params.plugins} cell-sheet --experiment {wildcards.sheet} --section {params.section}"
        " --sheet {input.sheet:q} {params.external} --out {output:q} 2> {log}"
