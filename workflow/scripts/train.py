"""Snakemake script for the 'train' stage: all logic is in scunlearn.pipeline.stage_train."""
from _stage import run

run("train", snakemake)  # noqa: F821
