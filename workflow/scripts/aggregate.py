"""Snakemake script for the 'aggregate' stage: all logic is in scunlearn.pipeline.stage_aggregate."""
from _stage import run

run("aggregate", snakemake)  # noqa: F821
