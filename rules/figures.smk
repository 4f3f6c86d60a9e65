# Each experiment's tables (csv, md, tex) and figures (png, pdf) from its evaluated runs, one job per
# experiment, every file in `snakemake --report` with its caption (report/captions/<name>.rst). Named targets:
# `snakemake standard`, `... poison`, `... figures`, `... tables`, `... summary` rebuild from finished runs.

rule run_config:
    """The merged config of this run (config.yaml, --configfile, --config), validated, for the report jobs and
    for the record, and the software it ran with; rewritten when the config changes."""
    output:
        config=report(f"{OUT}/config.yaml", caption="../report/captions/config.rst", category=report_category("run records")),
        software=report(f"{OUT}/software.yaml", caption="../report/captions/software.rst",
                        category=report_category("run records")),
    params:
        config=json.dumps(config, sort_keys=True, default=str),
    log:
        f"{LOGS}/run_config.log",
    run:
        write_run_record(config, output.config, output.software, log[0])


localrules:
    run_config,


for _exp in REPORTED_EXPERIMENTS:  # wsimil.experiments: each one's report job (the FocusMIL study: rules/studies.smk)

    rule:
        name:
            f"report_{_exp}"
        input:
            config=rules.run_config.output.config,
            metrics=experiment_inputs(_exp),
            manifests=manifest_files(needs(config, _exp)),
            runs=run_files(needs(config, _exp)),
            slides=heatmap_inputs(_exp),
            sheet=[SHEET_PATH] if HAS_SLIDES else [],
        output:
            _reported(experiment_outputs(config, _exp, HAS_SLIDES), _exp),
        params:
            plugins=PLUGIN_ARGS,
            experiment=_exp,
            out=get_results_dir,
            sheet=f"--sheet {SHEET_PATH}" if HAS_SLIDES else "",
            heatmaps=" ".join(HEATMAP_SLIDES),
            captions=CAPTIONS_DIR,
        log:
            f"{LOGS}/report/{_exp}.log",
        conda:
            "../envs/wsimil.yaml"
        shell:
            "wsimil {params.plugins} report --config {input.config} --experiment {params.experiment} --out {params.out}"
            " {params.sheet} --heatmap-slides {params.heatmaps} --captions {params.captions:q} 2> {log}"

    rule:
        name:
            _exp
        input:
            getattr(rules, f"report_{_exp}").output,
        default_target: False


rule report_summary:
    input:
        config=rules.run_config.output.config,
        software=rules.run_config.output.software,
        metrics=metrics_files(CELLS),
        manifests=manifest_files(CELLS),
        runs=run_files(CELLS),
        sheet=SHEET_PATH,
        annotations=annotation_files(),
        excluded=[EXCLUDED_PATH] if SOURCE != "synthetic" else [],
    output:
        _reported(summary_outputs(), "SUMMARY"),
    params:
        plugins=PLUGIN_ARGS,
        out=get_results_dir,
        captions=CAPTIONS_DIR,
    log:
        f"{LOGS}/report/summary.log",
    conda:
        "../envs/wsimil.yaml"
    shell:
        "wsimil {params.plugins} summary --config {input.config} --out {params.out} --captions {params.captions:q} 2> {log}"


rule run_table:
    """How every run was made (device, precision, seed, epochs, time, commit): tables/runs.*"""
    input:
        [f"{run_dir(c, m, s)}/run.json" for c in CELLS for m, s in cell_runs(c)],
    output:
        f"{OUT}/tables/runs.md",
        f"{OUT}/tables/runs.csv",
        f"{OUT}/tables/runs.tex",
        report(f"{OUT}/tables/runs.html", caption="../report/captions/runs.rst", category=report_category("run records")),
    params:
        plugins=PLUGIN_ARGS,
        stem=table_stem,
    log:
        f"{LOGS}/report/runs.log",
    conda:
        "../envs/wsimil.yaml"
    shell:
        "wsimil {params.plugins} run-table --run {input:q} --out {params.stem:q} 2> {log}"


rule summary:
    input:
        rules.report_summary.output,


rule tables:
    input:
        [f"{OUT}/{f}" for f in all_outputs(config, HAS_SLIDES) if f.startswith("tables/")],


rule figures:
    input:
        [f"{OUT}/{f}" for f in all_outputs(config, HAS_SLIDES) if f.startswith("figures/")],


# the cells of the experiments on the cards (wsimil.experiments.Experiment.in_cards)
CARD_CELLS = [c.name for c in CELLS.values() if get_experiment(c.experiment).in_cards]


rule report_cards:
    """A robustness card per method (wsimil.reporting.cards): `snakemake --cores N cards`."""
    input:
        config=rules.run_config.output.config,
        metrics=metrics_files(CARD_CELLS),
        manifests=manifest_files(CARD_CELLS),
        runs=run_files(CARD_CELLS),
        sheet=SHEET_PATH,
        annotations=annotation_files(),  # the lesions of the FROC's resamples
    output:
        _reported(card_outputs(config), "cards"),
    params:
        plugins=PLUGIN_ARGS,
        out=get_results_dir,  # cards/cards.csv is first
    log:
        f"{LOGS}/report/cards.log",
    conda:
        "../envs/wsimil.yaml"
    shell:
        "wsimil {params.plugins} cards --config {input.config} --out {params.out} 2> {log}"


rule cards:
    input:
        rules.report_cards.output,
