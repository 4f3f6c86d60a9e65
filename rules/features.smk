# Clean features: one job per group of `features.slides_per_job` slides (default 1: a job per slide), the
# network built once per job and batched over each slide's patches.

if SOURCE != "features":

    for _group in groups_of(ALL_SLIDES, config["features"]["slides_per_job"]):

        rule:
            name:
                f"extract_{group_name(_group)}"
            input:
                slides=slide_inputs(_group),
                patches=[f"{PATCHES}/{s}.h5" for s in _group],
            output:
                [f"{FEATURES}/clean/{s}.h5" for s in _group],
            params:
                slides=" ".join(shlex.quote(slide_path(s)) for s in _group),
                features=as_json("features"),
                ids=" ".join(_group),
            threads: 1
            log:
                f"{LOGS}/extract/{group_name(_group)}.log",
            benchmark:
                f"{BENCH}/extract/{group_name(_group)}.tsv"
            group:
                "extract"
            resources:
                mem_mb=mem_mb(8000),
                runtime=120,
                gpu=gpus("features"),
                gres=gres("features"),
            conda:
                conda_env("features")
            shell:
                "wsimil extract --slide {params.slides} --slide-id {params.ids} --patches {input.patches:q}"
                " --params {params.features:q} --threads {threads} --no-progress --out {output:q} 2> {log}"
