# FocusMIL's unpublished choices (experiment `focusmil_sensitivity`, wsimil.studies.focusmil_sensitivity): every
# setting of the grid trained on the training and validation splits of each problem, one job per problem and
# seed; the report job applies the selection rule fixed before the runs. No test slide is an input.

SENS = config["focusmil_sensitivity"]
SENS_DIR = f"{OUT}/studies/focusmil_sensitivity"


rule focusmil_sensitivity_run:
    input:
        unpack(sensitivity_inputs),
    output:
        f"{SENS_DIR}/{{problem}}_seed{{seed}}.csv",
    wildcard_constraints:
        problem="toy|milunit|standard",
        seed=r"\d+",
    params:
        data=sensitivity_args,
        max_steps=SENS["max_steps"],
        factors=json.dumps(SENS["factors"], sort_keys=True),
    threads: config["training"]["threads"]
    log:
        f"{LOGS}/focusmil_sensitivity/{{problem}}_seed{{seed}}.log",
    benchmark:
        f"{BENCH}/focusmil_sensitivity/{{problem}}_seed{{seed}}.tsv"
    resources:
        mem_mb=mem_mb(4000),
        runtime=240,
    conda:
        conda_env("training")
    shell:
        "wsimil focusmil-sensitivity --problem {wildcards.problem} --seed {wildcards.seed} {params.data}"
        " --max-steps {params.max_steps} --factors {params.factors:q} --out {output} --threads {threads}"
        " --no-progress 2> {log}"


rule report_focusmil_sensitivity:
    input:
        expand(f"{SENS_DIR}/{{problem}}_seed{{seed}}.csv", problem=SENS["problems"], seed=SENS["seeds"]),
    output:
        _reported(experiment_outputs(config, "focusmil_sensitivity", HAS_SLIDES), "focusmil_sensitivity"),
    params:
        table=study_table_stem,
        figure=study_figure,
        captions=CAPTIONS_DIR,
    log:
        f"{LOGS}/report/focusmil_sensitivity.log",
    conda:
        "../envs/wsimil.yaml"
    shell:
        "wsimil focusmil-sensitivity-report --runs {input} --table {params.table} --figure {params.figure}"
        " --captions {params.captions:q} 2> {log}"


rule focusmil_sensitivity:
    input:
        rules.report_focusmil_sensitivity.output,
    default_target: False
