"""Snakemake script for the 'report' stage: all logic is in scunlearn.pipeline.stage_report."""
from _stage import run

run("report", snakemake)  # noqa: F821
