"""Snakemake script for the 'acquire' stage: all logic is in scunlearn.stages.data.stage_acquire."""
from _stage import run

from scunlearn.stages.data import stage_acquire

run(stage_acquire, snakemake)  # noqa: F821
