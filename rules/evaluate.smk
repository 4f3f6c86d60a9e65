# Slide, patch and lesion metrics of every run: one rule, `evaluate`, one job per cell and method (all its
# seeds: the features and annotations are read once), addressable by name like every stage.


rule evaluate:
    input:
        unpack(_evaluate_inputs),
    output:
        [f"{OUT}/runs/{{cell}}/{{method}}/seed{s}/metrics.json" for s in SEEDS],
    wildcard_constraints:
        cell=_alternatives(CELLS),
        method=_alternatives(list_methods()),
    params:
        plugins=PLUGIN_ARGS,
        runs=lambda w: " ".join(shlex.quote(run_dir(w.cell, w.method, s)) for s in SEEDS),
        features=get_input_dir,
        threshold=config["evaluation"]["threshold"],
        positive=config["evaluation"]["patch_positive_fraction"],
    log:
        f"{LOGS}/evaluate/{{cell}}/{{method}}.log",
    group:
        "evaluate"
    resources:
        mem_mb=mem_mb(4000),
        runtime=30,
    conda:
        "../envs/wsimil.yaml"
    shell:
        "wsimil {params.plugins} evaluate {params.runs} --features {params.features} --sheet {input.sheet:q}"
        " --threshold {params.threshold} --patch-positive-fraction {params.positive} 2> {log}"
