"""Snakemake script for the 'train' stage with train.ensemble: all seeds of a model in one job
(scunlearn.stages.train.stage_train_ensemble)."""
from _stage import run

from scunlearn.stages.train import stage_train_ensemble

run(stage_train_ensemble, snakemake)  # noqa: F821
