"""Snakemake script for the 'forget' stage: all logic is in scunlearn.stages.data.stage_forget."""
from _stage import run

from scunlearn.stages.data import stage_forget

run(stage_forget, snakemake)  # noqa: F821
