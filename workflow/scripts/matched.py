"""Snakemake script for the 'matched' stage: all logic is in scunlearn.stages.train.stage_matched."""
from _stage import run

from scunlearn.stages.train import stage_matched

run(stage_matched, snakemake)  # noqa: F821
