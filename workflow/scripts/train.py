"""Snakemake script for the 'train' stage: all logic is in scunlearn.pipeline.stage_train."""
from _stage import run

from scunlearn.pipeline import stage_train

run(stage_train, snakemake)  # noqa: F821
