# Slide, patch and lesion metrics of every run: one rule, `evaluate`, one job per cell and method (all its
# seeds: the features and annotations are read once), addressable by name like every stage.


rule annotation_manifest:
    """One file standing for every slide's annotation XML (wsimil.evaluation.evaluate.write_annotation_manifest):
    the evaluation jobs read the lesions through it, so that an edited annotation makes them stale while each
    names one input instead of one per annotated slide."""
    input:
        annotation_files(),
    output:
        ANNOTATION_MANIFEST,
    log:
        f"{LOGS}/manifests/annotations.log",
    localrule: True
    run:
        from wsimil.evaluation.evaluate import write_annotation_manifest

        write_annotation_manifest({s: annotation_path(s) for s in ALL_SLIDES if as_input(annotation_path(s))},
                                  output[0])


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
        runs=quoted_run_dirs,
        threshold=config["evaluation"]["threshold"],
        positive=config["evaluation"]["patch_positive_fraction"],
        annotations=evaluate_annotations,
    log:
        f"{LOGS}/evaluate/{{cell}}/{{method}}.log",
    resources:
        mem_mb=mem_mb(4000),
        runtime=30,
    conda:
        "../envs/wsimil.yaml"
    shell:
        "wsimil {params.plugins} evaluate {params.runs} --features {input.features:q} {params.annotations}"
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
        run=parent_of_run_input,
        slides=cell_test_slides,
    log:
        f"{LOGS}/geojson/{{cell}}/{{method}}.log",
    conda:
        "../envs/wsimil.yaml"
    shell:
        "wsimil {params.plugins} geojson --run {params.run:q} --features {input.features:q} --out {output:q}"
        " --slide-id {params.slides} 2> {log}"
