# Training: one job per cell and group of `training.methods_per_job` methods, each job training every seed of
# its methods (docs/architecture.md, "Job granularity"): the features are read once and the ~3 s start-up of
# a PyTorch process is paid once per job, not once per method and seed.

for _cell in CELLS:
    if models_from(_cell):
        continue  # scored with another cell's models (below)
    for _methods in groups_of(list(CELLS[_cell].methods), config["training"]["methods_per_job"]):

        rule:
            name:
                f"train_{re.sub(r'[^A-Za-z0-9_]', '_', _cell)}_{'_'.join(_methods)}"
            input:
                features=expand("{dir}/{slide}.h5", dir=features_dir(_cell), slide=cell_slides(_cell)),
                sheet=cell_sheet(_cell),
            output:
                [f"{run_dir(_cell, m, s)}/{f}" for m in _methods for s in SEEDS for f in RUN_FILES],
            params:
                features=get_input_dir,
                out=lambda w, c=_cell: run_dir(c, "{method}", "{seed}"),  # the CLI fills in method and seed
                methods=" ".join(_methods),
                seeds=" ".join(map(str, SEEDS)),
                overrides=json.dumps({m: cell_overrides(config, CELLS[_cell], m) for m in _methods}, sort_keys=True),
                device=config["training"]["device"],
                precision=config["training"]["precision"],
                cell=_cell,
            threads: config["training"]["threads"]
            log:
                f"{LOGS}/train/{_cell}/{'_'.join(_methods)}.log",
            benchmark:
                f"{BENCH}/train/{_cell}/{'_'.join(_methods)}.tsv"
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
                "wsimil train --features {params.features} --slides {input.sheet:q} --method {params.methods}"
                " --seed {params.seeds} --out {params.out:q} --overrides-per-method {params.overrides:q}"
                " --experiment {params.cell} --device {params.device} --precision {params.precision}"
                " --threads {threads} --no-progress 2> {log}"


# A cell whose training would repeat another's (models_from: the synthetic ood cell) scores its slides with
# that cell's models: same seeds, same training slides, same models, so nothing is trained twice.
for _cell in [c for c in CELLS if models_from(c)]:
    _source = models_from(_cell)
    for _methods in groups_of(list(CELLS[_cell].methods), config["training"]["methods_per_job"]):

        rule:
            name:
                f"score_{re.sub(r'[^A-Za-z0-9_]', '_', _cell)}_{'_'.join(_methods)}"
            input:
                features=expand("{dir}/{slide}.h5", dir=features_dir(_cell), slide=cell_slides(_cell)),
                sheet=cell_sheet(_cell),
                runs=[f"{run_dir(_source, m, s)}/{f}" for m in _methods for s in SEEDS for f in RUN_FILES],
            output:
                [f"{run_dir(_cell, m, s)}/{f}" for m in _methods for s in SEEDS for f in RUN_FILES],
            params:
                features=get_input_dir,
                runs=" ".join(shlex.quote(run_dir(_source, m, s)) for m in _methods for s in SEEDS),
                outs=" ".join(shlex.quote(run_dir(_cell, m, s)) for m in _methods for s in SEEDS),
                cell=_cell,
            threads: config["training"]["threads"]
            log:
                f"{LOGS}/train/{_cell}/{'_'.join(_methods)}.log",
            benchmark:
                f"{BENCH}/train/{_cell}/{'_'.join(_methods)}.tsv"
            group:
                "train"
            resources:
                mem_mb=mem_mb(8000),
                runtime=60,
            conda:
                conda_env()
            shell:
                "wsimil score --run {params.runs} --features {params.features} --slides {input.sheet:q}"
                " --out {params.outs} --experiment {params.cell} --threads {threads} 2> {log}"


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
