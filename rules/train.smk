# One job per cell x method trains every seed: the features are read once and the ~3 s start-up of a torch
# process is paid once, not once per seed (docs/architecture.md, "Job granularity").


rule train:
    input:
        features=get_cell_features,
        sheet=get_cell_sheet,
    output:
        [f"{OUT}/runs/{{cell}}/{{method}}/seed{s}/{f}" for s in SEEDS for f in RUN_FILES],
    params:
        features=get_features_dir,
        out=get_run_template,
        seeds=" ".join(map(str, SEEDS)),
        overrides=get_overrides,
        device=config["training"]["device"],
        precision=config["training"]["precision"],
    threads: config["training"]["threads"]
    log:
        f"{LOGS}/train/{{cell}}/{{method}}.log",
    benchmark:
        f"{BENCH}/train/{{cell}}/{{method}}.tsv"
    resources:
        mem_mb=4000,
    conda:
        "../envs/wsimil.yaml"
    shell:
        "wsimil train --features {params.features} --slides {input.sheet:q} --method {wildcards.method}"
        " --seed {params.seeds} --out {params.out:q} --overrides {params.overrides:q}"
        " --experiment {wildcards.cell} --device {params.device} --precision {params.precision} --threads {threads} --no-progress 2> {log}"
