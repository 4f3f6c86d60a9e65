# wsimil: slides -> patches -> features -> (poison) -> train every method x seed -> metrics -> tables, figures.
# A table of contents: the logic lives in src/wsimil (the `wsimil` CLI), the rules only call it.

from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


include: "rules/common.smk"
include: "rules/slides.smk"
include: "rules/data.smk"
include: "rules/patches.smk"
include: "rules/features.smk"
include: "rules/poison.smk"
include: "rules/milunit.smk"
include: "rules/train.smk"
include: "rules/evaluate.smk"
include: "rules/studies.smk"
include: "rules/figures.smk"


# the report opens on the claims' verdicts once the summary job has written them (rules/common.smk)
report: report_text()


rule all:
    input:
        get_final_output(),
    default_target: True


# every successful run ends with the claims' verdicts, whichever logger prints the rest (wsimil.reporting.console)
onsuccess:
    from wsimil.reporting.console import print_verdicts

    print_verdicts(OUT)
