"""Snakemake script for the 'forget' stage: all logic is in scunlearn.pipeline.stage_forget."""
from _stage import run

from scunlearn.pipeline import stage_forget

run(stage_forget, snakemake)  # noqa: F821
