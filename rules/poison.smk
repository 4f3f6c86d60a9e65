# FocusMIL's semi-synthetic poison: green noise in the pixels of the target slides' patches, features
# re-extracted (one job per level and group of `features.slides_per_job` target slides); every other slide
# keeps its clean features (copied inside Snakemake, one local job per level). One feature folder per poison
# level (the poison experiment's, and each point of the dose-response curves).

if SOURCE != "features":

    POISON_TARGETS = select_poisoned_slides(MAIN_SHEET, config["poison"]["targets"])

    POISON_LEVELS = {c.features: c.params for c in CELLS.values() if c.features.startswith("poison_")}
    KEPT_CLEAN = [s for s in SLIDES if s not in POISON_TARGETS]

    for _tag in POISON_LEVELS:

        rule:
            """The slides the poison does not target keep their clean features: copied inside Snakemake (no
            process), one job per poison level."""
            name:
                f"poison_copy_{re.sub(r'[^A-Za-z0-9_]', '_', _tag)}"
            input:
                [f"{FEATURES}/clean/{s}.h5" for s in KEPT_CLEAN],
            output:
                [f"{FEATURES}/{_tag}/{s}.h5" for s in KEPT_CLEAN],
            log:
                f"{LOGS}/poison/{_tag}/copied.log",
            localrule: True
            run:
                for src, dst in zip(input, output):
                    copy_atomic(src, dst)
                Path(log[0]).write_text(f"{len(output)} slides are not poison targets: clean features copied\n")


    if config["features"]["slides_per_job"] == 1 and POISON_LEVELS:

        rule poison_extract:
            """One job per poison level and target slide, one named rule (`--set-resources poison_extract:...`; `poison` is the experiment target)."""
            input:
                slides=lambda w: slide_inputs([w.slide]),
                patches=f"{PATCHES}/{{slide}}.h5",
                clean=f"{FEATURES}/clean/{{slide}}.h5",
                sheet=SHEET_PATH,
            output:
                f"{FEATURES}/{{tag}}/{{slide}}.h5",
            wildcard_constraints:
                tag=_alternatives(POISON_LEVELS),
                slide=_alternatives([s for s in SLIDES if s in POISON_TARGETS]),
            params:
                slides=lambda w: shlex.quote(slide_path(w.slide)),
                features=as_json("features"),
                poison=lambda w: json.dumps({**config["poison"], "strength": float(POISON_LEVELS[w.tag]["strength"]),
                                             "fraction": float(POISON_LEVELS[w.tag]["fraction"])}, sort_keys=True),
            threads: 1
            log:
                f"{LOGS}/poison/{{tag}}/{{slide}}.log",
            benchmark:
                f"{BENCH}/poison/{{tag}}/{{slide}}.tsv"
            group:
                "poison"
            resources:
                mem_mb=mem_mb(8000),
                runtime=120,
                gpu=gpus("features"),
                gres=gres("features"),
            conda:
                conda_env("features")
            shell:
                "wsimil poison --slide {params.slides} --slide-id {wildcards.slide} --patches {input.patches:q}"
                " --clean {input.clean:q} --sheet {input.sheet:q} --params {params.features:q}"
                " --poison {params.poison:q} --threads {threads} --no-progress --out {output:q} 2> {log}"

    for _tag, _level in POISON_LEVELS.items() if config["features"]["slides_per_job"] > 1 else ():
        for _group in groups_of([s for s in SLIDES if s in POISON_TARGETS], config["features"]["slides_per_job"]):

            rule:
                name:
                    f"{re.sub(r'[^A-Za-z0-9_]', '_', _tag)}_{group_name(_group)}"
                input:
                    slides=slide_inputs(_group),
                    patches=[f"{PATCHES}/{s}.h5" for s in _group],
                    clean=[f"{FEATURES}/clean/{s}.h5" for s in _group],
                    sheet=SHEET_PATH,
                output:
                    [f"{FEATURES}/{_tag}/{s}.h5" for s in _group],
                params:
                    slides=" ".join(shlex.quote(slide_path(s)) for s in _group),
                    features=as_json("features"),
                    poison=json.dumps({**config["poison"], "strength": float(_level["strength"]),
                                       "fraction": float(_level["fraction"])}, sort_keys=True),
                    ids=" ".join(_group),
                threads: 1
                log:
                    f"{LOGS}/poison/{_tag}/{group_name(_group)}.log",
                benchmark:
                    f"{BENCH}/poison/{_tag}/{group_name(_group)}.tsv"
                group:
                    "poison"
                resources:
                    mem_mb=mem_mb(8000),
                    runtime=120,
                    gpu=gpus("features"),
                    gres=gres("features"),
                conda:
                    conda_env("features")
                shell:
                    "wsimil poison --slide {params.slides} --slide-id {params.ids} --patches {input.patches:q}"
                    " --clean {input.clean:q} --sheet {input.sheet:q} --params {params.features:q}"
                    " --poison {params.poison:q} --threads {threads} --no-progress --out {output:q} 2> {log}"
