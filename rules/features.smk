# Clean features: one job per slide, the network batched over its patches.


rule extract:
    input:
        slide=get_slide,
        patches=f"{PATCHES}/{{slide}}.h5",
    output:
        f"{FEATURES}/clean/{{slide}}.h5",
    params:
        features=as_json("features"),
    threads: 1
    log:
        f"{LOGS}/extract/{{slide}}.log",
    benchmark:
        f"{BENCH}/extract/{{slide}}.tsv"
    resources:
        mem_mb=4000,
    conda:
        "../envs/wsimil.yaml"
    shell:
        "wsimil extract --slide {input.slide:q} --slide-id {wildcards.slide} --patches {input.patches}"
        " --params {params.features:q} --threads {threads} --no-progress --out {output} 2> {log}"
