"""Snakemake script for the 'matched' stage: all logic is in scunlearn.pipeline.stage_matched."""
from _stage import run

run("matched", snakemake)  # noqa: F821
