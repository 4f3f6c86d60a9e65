# Tissue mask (CLAM-style) and the patch grid at a physical resolution, tumour fraction per patch.


if SOURCE != "features":

    rule patch:
        input:
            slide=get_slide,
            annotation=get_annotation,
        output:
            patches=f"{PATCHES}/{{slide}}.h5",
            qc=f"{PATCHES}/qc/{{slide}}.png",
        params:
            slide=get_slide_path,
            patching=as_json("patching"),
            annotation=get_annotation_path,
            label=get_label,
        log:
            f"{LOGS}/patch/{{slide}}.log",
        benchmark:
            f"{BENCH}/patch/{{slide}}.tsv"
        resources:
            mem_mb=mem_mb(4000),
            runtime=30,
        conda:
            "../envs/wsimil.yaml"
        shell:
            "wsimil patch --slide {params.slide:q} --slide-id {wildcards.slide} --annotation={params.annotation:q}"
            " --label {params.label} --params {params.patching:q} --out {output.patches} --qc {output.qc} 2> {log}"

    rule slide_table:
        """What patching found on every slide (resolution, level, tissue, patch count): tables/slides.*"""
        input:
            sheet=SHEET_PATH,
            patches=expand(f"{PATCHES}/{{slide}}.h5", slide=SLIDES),
        output:
            report(f"{OUT}/tables/slides.md", caption="../report/captions/slides.rst", category="Tables"),
            f"{OUT}/tables/slides.csv",
            f"{OUT}/tables/slides.tex",
        params:
            patches=lambda w, input: str(Path(input.patches[0]).parent),
            stem=lambda w, output: output[1].removesuffix(".csv"),
        log:
            f"{LOGS}/report/slides.log",
        conda:
            "../envs/wsimil.yaml"
        shell:
            "wsimil slide-table --sheet {input.sheet:q} --patches {params.patches:q} --out {params.stem:q} 2> {log}"
