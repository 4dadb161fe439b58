# scunlearn: machine unlearning for single-cell VAEs, audited by membership inference.
# Run the demo:   snakemake --cores 2 --configfile config/demo.yaml
# PBMC-33k study: snakemake --cores 8 --use-conda   (config/config.yaml)
import os
import sys

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version

min_version("9.0")


# config/config.yaml is the default study. A config given on the command line (--configfile,
# or a profile's configfile) REPLACES it rather than being merged into it, whatever the
# working directory: Snakemake would otherwise extend the default with the user's keys, and
# a one-forget-set study would silently get the PBMC forget sets and methods too.
# (`--config key=value` alone still edits the default study.) The default is the working
# directory's config/config.yaml when there is one, else the repository's.
DEFAULT_CONFIG = "config/config.yaml"
if not os.path.exists(DEFAULT_CONFIG):
    DEFAULT_CONFIG = os.path.join(workflow.basedir, DEFAULT_CONFIG)
if not workflow.overwrite_configfiles:

    configfile: DEFAULT_CONFIG


sys.path.insert(0, os.path.join(workflow.basedir, "src"))
from scunlearn import ScunlearnError
from scunlearn.configfile import validate_config
from scunlearn.params import check_config_size

# a config of nested YAML aliases is refused before validation walks it; a schema error is told in a
# few lines (file, key, bounded value, reason), never as jsonschema prints it (the whole instance and schema)
try:
    check_config_size(config, workflow.configfiles)
    validate_config(config, os.path.join(workflow.basedir, "config/schema.yaml"), workflow.configfiles)
except ScunlearnError as e:
    raise WorkflowError(str(e)) from None


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/sisa.smk"
include: "workflow/rules/unlearn.smk"
include: "workflow/rules/audit.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        f"{OUT}/report/summary.tsv",
        f"{OUT}/report/index.html",
        every_result(),  # so that a deleted checkpoint or audit is rebuilt (see common.smk)
    default_target: True
