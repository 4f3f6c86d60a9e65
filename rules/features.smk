# Clean features: one job per group of `features.slides_per_job` slides (default 1: a job per slide), the
# network built once per job and batched over each slide's patches.

for _group in groups_of(SLIDES, config["features"]["slides_per_job"]):

    rule:
        name:
            f"extract_{group_name(_group)}"
        input:
            slides=[slide_path(s) for s in _group],
            patches=[f"{PATCHES}/{s}.h5" for s in _group],
        output:
            [f"{FEATURES}/clean/{s}.h5" for s in _group],
        params:
            features=as_json("features"),
            ids=" ".join(_group),
        threads: 1
        log:
            f"{LOGS}/extract/{group_name(_group)}.log",
        benchmark:
            f"{BENCH}/extract/{group_name(_group)}.tsv"
        resources:
            mem_mb=4000,
        conda:
            "../envs/wsimil.yaml"
        shell:
            "wsimil extract --slide {input.slides:q} --slide-id {params.ids} --patches {input.patches:q}"
            " --params {params.features:q} --threads {threads} --no-progress --out {output:q} 2> {log}"
