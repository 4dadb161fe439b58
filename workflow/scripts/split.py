"""Snakemake script for the 'split' stage: all logic is in scunlearn.pipeline.stage_split."""
from _stage import run

run("split", snakemake)  # noqa: F821
