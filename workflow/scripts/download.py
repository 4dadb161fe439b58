"""Snakemake script for the 'download' stage: all logic is in scunlearn.stages.data.stage_download."""
from _stage import run

from scunlearn.stages.data import stage_download

run(stage_download, snakemake)  # noqa: F821
