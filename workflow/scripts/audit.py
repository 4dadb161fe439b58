"""Snakemake script for the 'audit' stage: all logic is in scunlearn.pipeline.stage_audit."""
from _stage import run

run("audit", snakemake)  # noqa: F821
