# Slide, patch and lesion metrics of every run of a cell: one job per cell (scoring is cheap, start-up is
# not). A rule per cell, because cells differ in their methods and so in their outputs.

for _cell in CELLS:

    rule:
        name:
            f"evaluate_{re.sub(r'[^A-Za-z0-9_]', '_', _cell)}"
        input:
            runs=[f"{run_dir(_cell, m, s)}/predictions.csv" for m, s in cell_runs(_cell)],
            features=expand("{dir}/{slide}.h5", dir=features_dir(_cell), slide=cell_slides(_cell)),
            sheet=cell_sheet(_cell),
        output:
            metrics_files([_cell]),
        params:
            runs=" ".join(run_dir(_cell, m, s) for m, s in cell_runs(_cell)),
            features=get_input_dir,
            threshold=config["evaluation"]["threshold"],
            positive=config["evaluation"]["patch_positive_fraction"],
        log:
            f"{LOGS}/evaluate/{_cell}.log",
        group:
            "evaluate"
        resources:
            mem_mb=mem_mb(4000),
            runtime=30,
        conda:
            "../envs/wsimil.yaml"
        shell:
            "wsimil evaluate {params.runs} --features {params.features} --sheet {input.sheet:q}"
            " --threshold {params.threshold} --patch-positive-fraction {params.positive} 2> {log}"
