"""Snakemake script for the 'unlearn' stage: all logic is in scunlearn.stages.unlearn.stage_unlearn."""
from _stage import run

from scunlearn.stages.unlearn import stage_unlearn

run(stage_unlearn, snakemake)  # noqa: F821
