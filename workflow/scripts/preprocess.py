"""Snakemake script for the 'preprocess' stage: all logic is in scunlearn.stages.data.stage_preprocess."""
from _stage import run

from scunlearn.stages.data import stage_preprocess

run(stage_preprocess, snakemake)  # noqa: F821
