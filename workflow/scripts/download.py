"""Snakemake script for the 'download' stage: all logic is in scunlearn.pipeline.stage_download."""
from _stage import run

run("download", snakemake)  # noqa: F821
