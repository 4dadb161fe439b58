"""Snakemake script for the 'acquire' stage: all logic is in scunlearn.pipeline.stage_acquire."""
from _stage import run

from scunlearn.pipeline import stage_acquire

run(stage_acquire, snakemake)  # noqa: F821
