"""Snakemake script for the 'sisa_shards' stage: all logic is in scunlearn.stages.unlearn.stage_sisa_shards."""
from _stage import run

from scunlearn.stages.unlearn import stage_sisa_shards

run(stage_sisa_shards, snakemake)  # noqa: F821
