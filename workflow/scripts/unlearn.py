"""Snakemake script for the 'unlearn' stage: all logic is in scunlearn.pipeline.stage_unlearn."""
from _stage import run

from scunlearn.pipeline import stage_unlearn

run(stage_unlearn, snakemake)  # noqa: F821
