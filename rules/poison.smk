# FocusMIL's semi-synthetic poison: green noise in the pixels of the target slides' patches, features
# re-extracted at every poison level (the poison experiment's and each point of the dose-response curves) by one
# job per target slide (or group of `features.slides_per_job` targets), the network built once for all levels.
# A slide the poison does not target keeps its clean features: a poison cell's feature manifest lists its clean
# file (rules/train.smk), so no copy is made.

if SOURCE != "features":

    if config["features"]["slides_per_job"] == 1 and POISON_LEVELS:

        rule poison_extract:
            """One job per target slide, every level, one named rule (`--set-resources poison_extract:...`;
            `poison` is the experiment target)."""
            input:
                slides=get_poison_target,
                patches=f"{PATCHES}/{{slide}}.h5",
                clean=f"{FEATURES}/clean/{{slide}}.h5",
                sheet=SHEET_PATH,
            output:
                poison_outputs(["{slide}"]),
            params:
                slides=quoted_slide_path,
                features=as_json("features"),
                poison=poison_params(_LEVEL_TAGS),
            threads: 1
            log:
                f"{LOGS}/poison/{{slide}}.log",
            benchmark:
                f"{BENCH}/poison/{{slide}}.tsv"
            group:
                "poison"
            resources:
                mem_mb=mem_mb(8000),
                runtime=120 * len(_LEVEL_TAGS),
                gpu=gpus("features"),
                gres=gres("features"),
            conda:
                conda_env("features")
            shell:
                "wsimil poison --slide {params.slides} --slide-id {wildcards.slide} --patches {input.patches:q}"
                " --clean {input.clean:q} --sheet {input.sheet:q} --params {params.features:q}"
                " --poison {params.poison} --threads {threads} --no-progress --out {output:q} 2> {log}"

    for _group in groups_of(POISON_TARGETS, config["features"]["slides_per_job"]) \
            if config["features"]["slides_per_job"] > 1 and POISON_LEVELS else ():

        rule:
            name:
                f"poison_{group_name(_group)}"
            input:
                slides=slide_inputs(_group),
                patches=[f"{PATCHES}/{s}.h5" for s in _group],
                clean=[f"{FEATURES}/clean/{s}.h5" for s in _group],
                sheet=SHEET_PATH,
            output:
                poison_outputs(_group),
            params:
                slides=" ".join(shlex.quote(slide_path(s)) for s in _group),
                features=as_json("features"),
                poison=poison_params(_LEVEL_TAGS),
                ids=" ".join(_group),
            threads: 1
            log:
                f"{LOGS}/poison/{group_name(_group)}.log",
            benchmark:
                f"{BENCH}/poison/{group_name(_group)}.tsv"
            group:
                "poison"
            resources:
                mem_mb=mem_mb(8000),
                runtime=120 * len(_LEVEL_TAGS),
                gpu=gpus("features"),
                gres=gres("features"),
            conda:
                conda_env("features")
            shell:
                "wsimil poison --slide {params.slides} --slide-id {params.ids} --patches {input.patches:q}"
                " --clean {input.clean:q} --sheet {input.sheet:q} --params {params.features:q}"
                " --poison {params.poison} --threads {threads} --no-progress --out {output:q} 2> {log}"

        address_as_stage(f"poison_{group_name(_group)}", "poison_extract")
