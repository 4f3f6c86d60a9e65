# Synthetic mini-Camelyon: the sample sheet, then one job per slide (tumour slides also get their ASAP XML).


if SOURCE == "synthetic":

    rule synth_sheet:
        output:
            f"{OUT}/data/slides.csv",
        params:
            synthetic=as_json("synthetic"),
            out=get_dataset_dir,
        log:
            f"{LOGS}/synth_sheet.log",
        conda:
            "../envs/wsimil.yaml"
        shell:
            "wsimil synth --params {params.synthetic:q} --out {params.out} --sheet-only 2> {log}"


    rule synth_slide_normal:
        output:
            f"{OUT}/data/slides/{{slide}}.tif",
        wildcard_constraints:
            slide="|".join(s for s in SLIDES if s not in TUMOUR_SYNTH) or "^$",
        params:
            synthetic=as_json("synthetic"),
            out=get_dataset_dir,
        log:
            f"{LOGS}/synth/{{slide}}.log",
        benchmark:
            f"{BENCH}/synth/{{slide}}.tsv"
        conda:
            "../envs/wsimil.yaml"
        shell:
            "wsimil synth --params {params.synthetic:q} --out {params.out} --slide {wildcards.slide} 2> {log}"


    rule synth_slide_tumour:
        output:
            slide=f"{OUT}/data/slides/{{slide}}.tif",
            annotation=f"{OUT}/data/annotations/{{slide}}.xml",
        wildcard_constraints:
            slide="|".join(TUMOUR_SYNTH) or "^$",
        params:
            synthetic=as_json("synthetic"),
            out=get_dataset_dir,
        log:
            f"{LOGS}/synth/{{slide}}.log",
        benchmark:
            f"{BENCH}/synth/{{slide}}.tsv"
        conda:
            "../envs/wsimil.yaml"
        shell:
            "wsimil synth --params {params.synthetic:q} --out {params.out} --slide {wildcards.slide} 2> {log}"
