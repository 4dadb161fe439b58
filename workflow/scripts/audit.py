"""Snakemake script for the 'audit' stage: all logic is in scunlearn.pipeline.stage_audit."""
from _stage import run

from scunlearn.pipeline import stage_audit

run(stage_audit, snakemake)  # noqa: F821
