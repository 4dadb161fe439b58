"""Snakemake script for the 'matched' stage: all logic is in scunlearn.pipeline.stage_matched."""
from _stage import run

from scunlearn.pipeline import stage_matched

run(stage_matched, snakemake)  # noqa: F821
