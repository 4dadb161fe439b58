"""Snakemake script for the 'unlearn' stage: all logic is in scunlearn.pipeline.stage_unlearn."""
from _stage import run

run("unlearn", snakemake)  # noqa: F821
