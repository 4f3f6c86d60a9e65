# Raff & Holt's algorithmic unit test of the MIL assumption: synthetic Gaussian bags with a poison that
# moves from negative training bags to positive test bags (no slides; features written directly).


rule milunit_data:
    output:
        sheet=f"{MILUNIT}/slides.csv",
        features=expand("{dir}/features/{bag}.h5", dir=MILUNIT, bag=milunit_ids()),
    params:
        milunit=as_json("milunit"),
        out=get_milunit_dir,
    log:
        f"{LOGS}/milunit_data.log",
    conda:
        "../envs/wsimil.yaml"
    shell:
        "wsimil milunit --params {params.milunit:q} --out {params.out} 2> {log}"
