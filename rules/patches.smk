# Tissue mask (CLAM-style) and the patch grid at a physical resolution, tumour fraction per patch: one job per
# group of `patching.slides_per_job` slides (auto: 20 synthetic slides; 1 for a user's slides, so that a slide
# that cannot be read fails only its own job).


if SOURCE != "features" and patch_slides_per_job() == 1:

    rule patch:
        """One job per slide, one named rule (`--set-resources patch:mem_mb=...`): a user's slides."""
        input:
            slides=get_slide,
            annotations=get_annotation,
        output:
            patches=f"{PATCHES}/{{slide}}.h5",
            qc=f"{PATCHES}/qc/{{slide}}.png",
        params:
            slides=quoted_slide_path,
            patching=stage_params("patching"),
            annotations=quoted_annotation_path,
            labels=get_label,
        threads: 1
        log:
            f"{LOGS}/patch/{{slide}}.log",
        benchmark:
            f"{BENCH}/patch/{{slide}}.tsv"
        group:
            "slides"
        resources:
            mem_mb=mem_mb(4000),
            runtime=30,
        conda:
            "../envs/wsimil.yaml"
        shell:
            "wsimil patch --slide {params.slides} --slide-id {wildcards.slide} --annotation {params.annotations}"
            " --label {params.labels} --params {params.patching:q} --out {output.patches:q}"
            " --qc {output.qc:q} 2> {log}"

elif SOURCE != "features":

    for _group in groups_of(ALL_SLIDES, patch_slides_per_job()):

        rule:
            name:
                f"patch_{group_name(_group)}"
            input:
                slides=slide_inputs(_group),
                annotations=[f for s in _group for f in as_input(annotation_path(s))],
            output:
                patches=[f"{PATCHES}/{s}.h5" for s in _group],
                qc=[f"{PATCHES}/qc/{s}.png" for s in _group],
            params:
                slides=" ".join(shlex.quote(slide_path(s)) for s in _group),
                ids=" ".join(_group),
                patching=stage_params("patching"),
                annotations=" ".join(shlex.quote(annotation_path(s)) for s in _group),
                labels=" ".join(str(LABELS[s]) for s in _group),
            threads: 1
            log:
                f"{LOGS}/patch/{group_name(_group)}.log",
            benchmark:
                f"{BENCH}/patch/{group_name(_group)}.tsv"
            group:
                "slides"
            resources:
                mem_mb=mem_mb(4000),
                runtime=30 * len(_group),
            conda:
                "../envs/wsimil.yaml"
            shell:
                "wsimil patch --slide {params.slides} --slide-id {params.ids} --annotation {params.annotations}"
                " --label {params.labels} --params {params.patching:q} --out {output.patches:q}"
                " --qc {output.qc:q} 2> {log}"

        address_as_stage(f"patch_{group_name(_group)}", "patch")

if SOURCE != "features":

    rule slide_table:
        """What patching found on every slide (resolution, level, tissue, patch count): tables/slides.*"""
        input:
            sheet=SHEET_PATH,
            patches=expand(f"{PATCHES}/{{slide}}.h5", slide=ALL_SLIDES),
        output:
            f"{OUT}/tables/slides.md",
            f"{OUT}/tables/slides.csv",
            f"{OUT}/tables/slides.tex",
            report(f"{OUT}/tables/slides.html", caption="../report/captions/slides.rst",
                   category=report_category("run records")),
        params:
            patches=patch_folder,
            stem=table_stem,
        log:
            f"{LOGS}/report/slides.log",
        conda:
            "../envs/wsimil.yaml"
        shell:
            "wsimil slide-table --sheet {input.sheet:q} --patches {params.patches:q} --out {params.stem:q} 2> {log}"
