"""The report: the paper's tables and figures from ``summary.tsv``, and one HTML page.

``build_report`` is the entry point used by the workflow's report rule; the table and
figure builders are public for users who script against ``summary.tsv``.
"""

from .figures import FIGURE_CAPTIONS, make_figures
from .html import build_report
from .tables import (build_tables, read_summary, status, table_adversarial, table_all,
                     table_fisher, table_utility)

__all__ = [
    "FIGURE_CAPTIONS", "build_report", "build_tables", "make_figures", "read_summary", "status",
    "table_adversarial", "table_all", "table_fisher", "table_utility",
]
