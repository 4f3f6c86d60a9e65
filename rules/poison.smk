# FocusMIL's semi-synthetic poison: green noise in the pixels of the target slides' patches, features
# re-extracted; every other slide keeps its clean features (copied). One feature folder per poison level
# (the poison experiment's, and each point of the dose-response curves).

POISON_TARGETS = select_poisoned_slides(SHEET, config["poison"]["targets"])
POISON_LEVEL = f"{FEATURES}/poison_s{{strength}}_f{{fraction}}_seed{{pseed}}"


localrules:
    poison_copy,


rule poison_copy:
    """A slide the poison does not target keeps its clean features: copied inside Snakemake (no process)."""
    input:
        f"{FEATURES}/clean/{{slide}}.h5",
    output:
        f"{POISON_LEVEL}/{{slide}}.h5",
    wildcard_constraints:
        slide="|".join(s for s in SLIDES if s not in POISON_TARGETS) or "^$",
        strength=r"[0-9.e+-]+",
        fraction=r"[0-9.e+-]+",
        pseed=r"\d+",
    run:
        copy_atomic(input[0], output[0])


rule poison_features:
    input:
        slide=get_slide,
        patches=f"{PATCHES}/{{slide}}.h5",
        clean=f"{FEATURES}/clean/{{slide}}.h5",
        sheet=SHEET_PATH,
    output:
        f"{POISON_LEVEL}/{{slide}}.h5",
    wildcard_constraints:
        slide="|".join(POISON_TARGETS) or "^$",
        strength=r"[0-9.e+-]+",
        fraction=r"[0-9.e+-]+",
        pseed=r"\d+",
    params:
        features=as_json("features"),
        poison=get_poison_params,
    threads: 1
    log:
        f"{LOGS}/poison/s{{strength}}_f{{fraction}}_seed{{pseed}}/{{slide}}.log",
    benchmark:
        f"{BENCH}/poison/s{{strength}}_f{{fraction}}_seed{{pseed}}/{{slide}}.tsv"
    resources:
        mem_mb=4000,
    conda:
        "../envs/wsimil.yaml"
    shell:
        "wsimil poison --slide {input.slide:q} --slide-id {wildcards.slide} --patches {input.patches}"
        " --clean {input.clean} --sheet {input.sheet:q} --params {params.features:q} --poison {params.poison:q}"
        " --threads {threads} --no-progress --out {output} 2> {log}"


rule ood_sheet:
    input:
        SHEET_PATH,
    output:
        OOD_SHEET,
    params:
        centers=" ".join(map(str, config["ood"]["train_centers"] or [])),
    log:
        f"{LOGS}/ood_sheet.log",
    conda:
        "../envs/wsimil.yaml"
    shell:
        "wsimil ood-sheet --sheet {input:q} --train-centers {params.centers} --out {output:q} 2> {log}"
