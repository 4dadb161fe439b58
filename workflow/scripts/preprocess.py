"""Snakemake script for the 'preprocess' stage: all logic is in scunlearn.pipeline.stage_preprocess."""
from _stage import run

from scunlearn.pipeline import stage_preprocess

run(stage_preprocess, snakemake)  # noqa: F821
