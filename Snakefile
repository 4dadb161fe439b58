# scunlearn: machine unlearning for single-cell VAEs, audited by membership inference.
# Run the demo:   snakemake --cores 2 --configfile config/demo.yaml
# PBMC-33k study: snakemake --cores 8 --use-conda   (config/config.yaml)
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config/config.yaml"


validate(config, "config/schema.yaml", set_default=True)


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/unlearn.smk"
include: "workflow/rules/audit.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        f"{OUT}/report/summary.tsv",
        f"{OUT}/report/index.html",
    default_target: True
