# Real data: the sample sheet of a public dataset or of the user's own sheet, the download of every slide and
# annotation (one job per file: resumable, retried, checked; wsimil.datasets.download), and imported features.


if SOURCE != "synthetic":

    localrules:
        sample_sheet,


    rule sample_sheet:
        """The sheet every rule reads (excluded slides out, paths relative to it) and the slides left out, with why."""
        output:
            sheet=SHEET_PATH,
            excluded=EXCLUDED_PATH,
        params:
            sheet=spreadsheet_safe_frame(SHEET).to_csv(index=False),
            excluded=spreadsheet_safe_frame(pd.DataFrame(sorted(LEFT_OUT.items()), columns=["slide_id", "reason"])).to_csv(
                index=False),
        log:
            f"{LOGS}/sample_sheet.log",
        run:
            write_sample_sheet(output, params, log[0])


if PLAN is not None:
    DOWNLOAD_ROOT = str(PLAN.root)

    # Each file its own job: a failure stops only its slide, a rerun resumes it from <file>.part, and
    # protected() keeps a finished download from being deleted by a forced rerun.
    if "downloads" not in workflow.global_resources:  # --resources downloads=N wins
        workflow.register_resource("downloads", config["download"]["parallel"])

    rule download:
        output:
            protected(f"{DOWNLOAD_ROOT}/{{rel}}"),
        wildcard_constraints:
            rel="|".join(re.escape(r) for r in PLAN.files) or "^$",
        params:
            url=download_url,
            md5=download_md5,
            size=download_size,
            retries=config["download"]["retries"],
            timeout=config["download"]["timeout_s"],
        log:
            f"{LOGS}/download/{{rel}}.log",
        resources:
            downloads=1,
        shell:
            "wsimil download --url {params.url:q} --out {output:q} --md5 {params.md5} --size {params.size}"
            " --retries {params.retries} --timeout {params.timeout} 2> {log}"


if SOURCE == "features":
    IMPORTED = config["imported_features"]
    if not IMPORTED["dir"]:
        raise ValueError("config key 'imported_features.dir': required when dataset.source is 'features'")

    for _group in groups_of(SLIDES, config["features"]["slides_per_job"]):

        rule:
            name:
                f"import_features_{group_name(_group)}"
            input:
                sources=[f for s in _group for f in imported_source(s)],
                sheet=SHEET_PATH,
            output:
                [f"{FEATURES}/clean/{s}.h5" for s in _group],
            params:
                fmt=IMPORTED["format"],
                src=IMPORTED["dir"],
                ids=" ".join(_group),
                size=f"--patch-size-level0 {IMPORTED['patch_size_level0']}" if IMPORTED["patch_size_level0"] else "",
                dtype=config["features"]["dtype"],
            log:
                f"{LOGS}/import_features/{group_name(_group)}.log",
            benchmark:
                f"{BENCH}/import_features/{group_name(_group)}.tsv"
            conda:
                "../envs/wsimil.yaml"
            shell:
                "wsimil import-features --format {params.fmt} --src-dir {params.src:q} --sheet {input.sheet:q}"
                " --slide-id {params.ids} {params.size} --dtype {params.dtype} --out {output:q} 2> {log}"

        address_as_stage(f"import_features_{group_name(_group)}", "import_features")
