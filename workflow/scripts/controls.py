"""Snakemake script for the 'controls' stage: all logic is in scunlearn.stages.audit.stage_controls."""
from _stage import run

from scunlearn.stages.audit import stage_controls

run(stage_controls, snakemake)  # noqa: F821
