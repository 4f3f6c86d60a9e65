# Training: one job per cell and group of `training.methods_per_job` methods, each job training every seed of
# its methods (docs/architecture.md, "Job granularity"): the features are read once and the ~3 s start-up of
# a PyTorch process is paid once per job, not once per method and seed.

for _cell in CELLS:
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


rule ood_sheet:
    input:
        SHEET_PATH,
    output:
        OOD_SHEET,
    params:
        centers=" ".join(map(str, config["ood"]["train_centers"] or [])),
    log:
        f"{LOGS}/ood_sheet.log",
    conda:
        "../envs/wsimil.yaml"
    shell:
        "wsimil ood-sheet --sheet {input:q} --train-centers {params.centers} --out {output:q} 2> {log}"
