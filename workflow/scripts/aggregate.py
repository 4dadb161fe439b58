"""Snakemake script for the 'aggregate' stage: all logic is in scunlearn.pipeline.stage_aggregate."""
from _stage import run

from scunlearn.pipeline import stage_aggregate

run(stage_aggregate, snakemake)  # noqa: F821
