"""Snakemake script for the 'report' stage: all logic is in scunlearn.pipeline.stage_report."""
from _stage import run

from scunlearn.pipeline import stage_report

run(stage_report, snakemake)  # noqa: F821
