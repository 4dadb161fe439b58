#!/usr/bin/env python
"""Per-rule cost table of a finished run: wall, CPU, peak memory and start-up share.

Reads ``RESULTS_DIR/benchmarks/**.tsv`` (Snakemake ``benchmark:`` files) and the rule
logs under ``RESULTS_DIR/logs`` (each stage logs ``ready <s>s after process start``
when its imports and data loading are done). The logic is in ``scunlearn.costs``.

Usage (from the repository root)::

    python bench/stage_costs.py results/demo                # per-rule table
    python bench/stage_costs.py results/demo --jobs         # and one row per job
    python bench/stage_costs.py results/demo --out costs.tsv
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
try:
    import scunlearn  # noqa: F401
except ImportError:  # not pip-installed: use the source tree
    sys.path.insert(0, str(ROOT / "src"))

from scunlearn.costs import format_table, job_costs, rule_costs  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results_dir", help="a run's results folder, e.g. results/demo")
    p.add_argument("--jobs", action="store_true", help="also print one row per job")
    p.add_argument("--out", help="write the per-rule table as TSV here")
    a = p.parse_args(argv)
    jobs = job_costs(a.results_dir)
    if jobs.empty:
        print(f"{a.results_dir}: no benchmarks/*.tsv found", file=sys.stderr)
        return 1
    table = rule_costs(jobs)
    print(f"# {a.results_dir}: {len(jobs)} jobs; wall/CPU/start-up summed over each rule's jobs (s), "
          "peak RSS max (MB); startup = process start to 'ready' (imports + data loading), in wall and "
          "CPU seconds; trust CPU shares on a shared machine")
    print(format_table(table))
    if a.jobs:
        print()
        print(jobs.drop(columns="log").to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    if a.out:
        table.to_csv(a.out, sep="\t", index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
