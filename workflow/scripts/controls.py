"""Snakemake script for the 'controls' stage: all logic is in scunlearn.pipeline.stage_controls."""
from _stage import run

from scunlearn.pipeline import stage_controls

run(stage_controls, snakemake)  # noqa: F821
