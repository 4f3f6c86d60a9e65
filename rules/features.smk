# Clean features: one job per group of `features.slides_per_job` slides, the network built once per job and
# batched over each slide's patches. At 1 (the default) a single named rule `extract` with a slide wildcard;
# above 1 (the synthetic default, 20) one rule per group (Snakemake outputs cannot vary with a wildcard).

if SOURCE != "features" and config["features"]["slides_per_job"] == 1:

    rule extract:
        """One job per slide, one named rule (`--set-resources extract:mem_mb=...`): the real-data default."""
        input:
            slides=get_slide,
            patches=f"{PATCHES}/{{slide}}.h5",
        output:
            f"{FEATURES}/clean/{{slide}}.h5",
        params:
            slides=quoted_slide_path,
            features=as_json("features"),
        threads: 1
        log:
            f"{LOGS}/extract/{{slide}}.log",
        benchmark:
            f"{BENCH}/extract/{{slide}}.tsv"
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
            "wsimil extract --slide {params.slides} --slide-id {wildcards.slide} --patches {input.patches:q}"
            " --params {params.features:q} --threads {threads} --no-progress --out {output:q} 2> {log}"

elif SOURCE != "features":

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

        address_as_stage(f"extract_{group_name(_group)}", "extract")
