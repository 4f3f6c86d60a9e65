# Tables (csv, md, tex) and figures from the evaluated runs; both appear in `snakemake --report`.


rule report_tables_figures:
    input:
        get_all_metrics,
    output:
        tables=[
            report(t, caption="../report/table.rst", category="Tables")
            for t in report_outputs()[0]
            if t.endswith(".md")
        ],
        csv=[t for t in report_outputs()[0] if t.endswith(".csv")],
        figures=[
            report(f, caption="../report/figure.rst", category="Figures")
            for f in report_outputs()[1]
        ],
    params:
        runs=f"{OUT}/runs",
        experiments=" ".join(EXPERIMENTS),
        methods=" ".join(METHODS),
        out=get_results_dir,
        dataset=DATASET,
    log:
        f"{LOGS}/report.log",
    conda:
        "../envs/wsimil.yaml"
    shell:
        "wsimil report --runs {params.runs} --experiments {params.experiments} --methods {params.methods}"
        " --dataset {params.dataset} --out {params.out} 2> {log}"
