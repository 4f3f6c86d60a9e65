# Slide and patch metrics of every run of an experiment (one job: scoring is cheap, start-up is not).


rule evaluate:
    input:
        runs=get_experiment_runs,
        features=get_experiment_features,
    output:
        [f"{OUT}/runs/{{experiment}}/{m}/seed{s}/metrics.json" for m in METHODS for s in SEEDS],
    params:
        runs=get_experiment_run_dirs,
        features=get_features_dir,
        threshold=config["evaluation"]["threshold"],
        positive=config["evaluation"]["patch_positive_fraction"],
    log:
        f"{LOGS}/evaluate/{{experiment}}.log",
    conda:
        "../envs/wsimil.yaml"
    shell:
        "wsimil evaluate {params.runs} --features {params.features} --threshold {params.threshold}"
        " --patch-positive-fraction {params.positive} 2> {log}"
