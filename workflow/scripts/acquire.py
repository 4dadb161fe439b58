"""Snakemake script for the 'acquire' stage: all logic is in scunlearn.pipeline.stage_acquire."""
from _stage import run

run("acquire", snakemake)  # noqa: F821
