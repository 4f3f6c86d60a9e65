# Synthetic mini-Camelyon: the sample sheets, then one job per group of `synthetic.slides_per_job` slides
# (tumour slides also get their ASAP XML). A slide takes ~0.3 s to render at 1 um/px; the job's start-up and
# config check (~1 s) are paid once per group.


if SOURCE == "synthetic":

    rule synth_sheet:
        output:
            f"{OUT}/data/slides.csv",
            f"{OUT}/data/slides_external.csv",
        params:
            synthetic=stage_params("synthetic"),
            out=get_dataset_dir,
        log:
            f"{LOGS}/synth_sheet.log",
        conda:
            "../envs/wsimil.yaml"
        shell:
            "wsimil synth --params {params.synthetic:q} --out {params.out} --sheet-only 2> {log}"

    for _group in groups_of(ALL_SLIDES, config["synthetic"]["slides_per_job"]):

        rule:
            name:
                f"synth_{group_name(_group)}"
            output:
                [f"{OUT}/data/annotations/{s}.xml" for s in _group if s in TUMOUR_SYNTH]
                + [f"{OUT}/data/slides/{s}.tif" for s in _group],  # the slide last: it marks the job done
            params:
                synthetic=stage_params("synthetic"),
                out=get_dataset_dir,
                slides=" ".join(f"--slide {s}" for s in _group),
            log:
                f"{LOGS}/synth/{group_name(_group)}.log",
            benchmark:
                f"{BENCH}/synth/{group_name(_group)}.tsv"
            group:
                "slides"
            resources:
                mem_mb=mem_mb(2000),
                runtime=30,
            conda:
                "../envs/wsimil.yaml"
            shell:
                "wsimil synth --params {params.synthetic:q} --out {params.out} {params.slides} 2> {log}"

        address_as_stage(f"synth_{group_name(_group)}", "synth")
