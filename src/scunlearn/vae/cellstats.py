"""Per-cell statistics of a model on every cell, written beside its checkpoint.

The per-cell audit calibrates one model's statistic on a cell against reference models'
statistics on the same cell. Each training or unlearning job writes its model's
deterministic (eval mode, z = μ) ELBO, NB reconstruction NLL and KL for *all* cells, so
the audit reads small arrays instead of loading and running every reference model again.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from scunlearn import ScunlearnError
from scunlearn.io import rebuild_hint, verify_digest, write_with_digest

STATS = ("elbo", "nll", "kl")


def _barcode_digest(barcodes) -> str:
    return hashlib.sha1("\n".join(map(str, barcodes)).encode()).hexdigest()


def cell_stats(model, X: torch.Tensor) -> dict[str, np.ndarray]:
    """ELBO, NLL and KL (float64) of every row of X under ``model`` (deterministic)."""
    from scunlearn.vae.model import cell_terms

    t = cell_terms(model, X, np.arange(X.shape[0]))
    nll, kl = t.nll.double().cpu().numpy(), t.kl.double().cpu().numpy()
    return {"elbo": -(nll + kl), "nll": nll, "kl": kl}


def write_cell_stats(model, X: torch.Tensor, barcodes, path) -> None:
    """Write :func:`cell_stats` with a digest of the cell barcodes inside and the file's SHA-256 beside it
    (both checked on reading: the audit's verdicts are computed from these numbers)."""
    st = cell_stats(model, X)

    def write(tmp):
        with open(tmp, "wb") as fh:
            np.savez(fh, barcodes_sha1=np.array(_barcode_digest(barcodes)), **st)

    write_with_digest(path, write)


def read_cell_stats(path, barcodes) -> dict[str, np.ndarray]:
    """Per-cell statistics from ``path``, refused unless the file is the one its stage wrote (its recorded
    SHA-256) and they were computed on these cells in this order."""
    try:
        verify_digest(path)
        with np.load(path, allow_pickle=False) as z:
            out = {k: z[k] for k in STATS}
            digest = str(z["barcodes_sha1"])
    except FileNotFoundError as e:
        raise ScunlearnError(f"{path}: per-cell statistics not found") from e
    except ScunlearnError:
        raise
    except Exception as e:  # noqa: BLE001
        raise ScunlearnError(f"{path}: unreadable per-cell statistics ({type(e).__name__}: {e}); "
                             f"{rebuild_hint(path)}") from e
    if digest != _barcode_digest(barcodes) or len(out["elbo"]) != len(barcodes):
        raise ScunlearnError(f"{path}: per-cell statistics were computed on other cells than the "
                             f"current data; {rebuild_hint(path)}")
    return out
