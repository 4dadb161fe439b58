"""Snakemake script for the 'report' stage: all logic is in scunlearn.stages.report.stage_report."""
from _stage import run

from scunlearn.stages.report import stage_report

run(stage_report, snakemake)  # noqa: F821
