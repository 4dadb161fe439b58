"""What the model stages share: the device, seeds and data of a training-like job, and per-cell statistics."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported by the stages that need it: data and report stages run without it
    import torch

log = logging.getLogger(__name__)


def job_device(spec: str) -> torch.device:
    """The device config names (`auto`: CUDA if present), checked and logged."""
    from scunlearn.runtime import resolve_device

    dev = resolve_device(spec)
    log.info("device: %s", dev)
    return dev


def setup_job(inp: dict, params: dict, threads: int):
    """Seed, thread count and device of a training-like stage, then its data: (seed, device, adata, X, part)."""
    from scunlearn.runtime import seed_everything
    from scunlearn.vae.train import load_experiment

    seed = int(params["seed"])
    seed_everything(seed, threads)
    device = job_device(params["device"])
    return (seed, device, *load_experiment(inp, device))


def write_cells(model, X, adata, out) -> None:
    """The model's per-cell statistics on every cell, for the per-cell audit (see :mod:`scunlearn.vae.cellstats`)."""
    from scunlearn.vae.cellstats import write_cell_stats

    if "cells" in out:
        write_cell_stats(model, X, adata.obs_names, out["cells"])
