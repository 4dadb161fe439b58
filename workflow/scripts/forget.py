"""Snakemake script for the 'forget' stage: all logic is in scunlearn.pipeline.stage_forget."""
from _stage import run

run("forget", snakemake)  # noqa: F821
