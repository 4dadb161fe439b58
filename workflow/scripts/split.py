"""Snakemake script for the 'split' stage: all logic is in scunlearn.pipeline.stage_split."""
from _stage import run

from scunlearn.pipeline import stage_split

run(stage_split, snakemake)  # noqa: F821
