"""``python -m scunlearn.report [FOLDER]``: regenerate the Snakemake report's caption files
(default ``workflow/report``) from :mod:`scunlearn.report.captions`, their one source."""

import sys

from scunlearn.report.captions import write_rst

for path in write_rst(sys.argv[1] if len(sys.argv) > 1 else "workflow/report"):
    print(path)
