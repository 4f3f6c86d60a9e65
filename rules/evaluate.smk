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


# QuPath GeoJSON of every test slide's instance scores (docs/metrics.md, "Heatmaps in QuPath"): the standard
# cell, each method, the first configured seed (the heatmaps' seed).
rule geojson:
    input:
        unpack(_cell_inputs),
        run=f"{OUT}/runs/{{cell}}/{{method}}/seed{SEEDS[0]}/instance_scores.h5",
    output:
        directory(f"{OUT}/geojson/{{cell}}/{{method}}/seed{SEEDS[0]}"),
    wildcard_constraints:
        cell=_alternatives(CELLS),
        method=_alternatives(list_methods()),
    params:
        plugins=PLUGIN_ARGS,
        run=lambda w, input: str(Path(input.run).parent),
        features=get_input_dir,
        slides=lambda w: " ".join(s for s in cell_slides(w.cell) if _ROWS.loc[s, "split"] == "test"),
    log:
        f"{LOGS}/geojson/{{cell}}/{{method}}.log",
    conda:
        "../envs/wsimil.yaml"
    shell:
        "wsimil {params.plugins} geojson --run {params.run:q} --features {params.features} --out {output:q}"
        " --slide-id {params.slides} 2> {log}"
