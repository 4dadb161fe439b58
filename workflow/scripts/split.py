"""Snakemake script for the 'split' stage: all logic is in scunlearn.stages.data.stage_split."""
from _stage import run

from scunlearn.stages.data import stage_split

run(stage_split, snakemake)  # noqa: F821
