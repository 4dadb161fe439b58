"""Snakemake script for the 'audit' stage: all logic is in scunlearn.stages.audit.stage_audit."""
from _stage import run

from scunlearn.stages.audit import stage_audit

run(stage_audit, snakemake)  # noqa: F821
