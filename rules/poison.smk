# FocusMIL's semi-synthetic poison: green noise in the pixels of the target slides' patches, features
# re-extracted; every other slide keeps its clean features (copied).


rule poison:
    input:
        slide=get_slide,
        patches=f"{PATCHES}/{{slide}}.h5",
        clean=f"{FEATURES}/clean/{{slide}}.h5",
        sheet=SHEET_PATH,
    output:
        f"{FEATURES}/{POISON_TAG}/{{slide}}.h5",
    params:
        features=as_json("features"),
        poison=as_json("poison"),
    threads: 1
    log:
        f"{LOGS}/poison/{{slide}}.log",
    benchmark:
        f"{BENCH}/poison/{{slide}}.tsv"
    resources:
        mem_mb=4000,
    conda:
        "../envs/wsimil.yaml"
    shell:
        "wsimil poison --slide {input.slide:q} --slide-id {wildcards.slide} --patches {input.patches}"
        " --clean {input.clean} --sheet {input.sheet:q} --params {params.features:q} --poison {params.poison:q}"
        " --threads {threads} --no-progress --out {output} 2> {log}"
