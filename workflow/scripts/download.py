"""Snakemake script for the 'download' stage: all logic is in scunlearn.pipeline.stage_download."""
from _stage import run

from scunlearn.pipeline import stage_download

run(stage_download, snakemake)  # noqa: F821
