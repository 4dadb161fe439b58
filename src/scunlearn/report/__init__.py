"""The report: audit power, the per-cell method comparison, the paper's tables and figures
from ``summary.tsv``, and one HTML page.

``build_report`` is the entry point used by the workflow's report rule; the table and
figure builders are public for users who script against ``summary.tsv``. Titles and
captions are written once, in :mod:`.captions`.
"""

from scunlearn.report.captions import FIGURES, TABLES
from scunlearn.report.figures import FIGURE_CAPTIONS, make_figures
from scunlearn.report.html import build_report
from scunlearn.report.tables import (
                     build_tables,
                     read_summary,
                     status,
                     table_adversarial,
                     table_all,
                     table_comparison,
                     table_fisher,
                     table_power,
                     table_utility,
                     vs_finetune,
)

__all__ = [
    "FIGURES", "FIGURE_CAPTIONS", "TABLES", "build_report", "build_tables", "make_figures", "read_summary",
    "status", "table_adversarial", "table_all", "table_comparison", "table_fisher", "table_power",
    "table_utility", "vs_finetune",
]
