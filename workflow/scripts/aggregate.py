"""Snakemake script for the 'aggregate' stage: all logic is in scunlearn.stages.audit.stage_aggregate."""
from _stage import run

from scunlearn.stages.audit import stage_aggregate

run(stage_aggregate, snakemake)  # noqa: F821
