"""Snakemake script for the 'train' stage: all logic is in scunlearn.stages.train.stage_train."""
from _stage import run

from scunlearn.stages.train import stage_train

run(stage_train, snakemake)  # noqa: F821
