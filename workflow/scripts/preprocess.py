"""Snakemake script for the 'preprocess' stage: all logic is in scunlearn.pipeline.stage_preprocess."""
from _stage import run

run("preprocess", snakemake)  # noqa: F821
