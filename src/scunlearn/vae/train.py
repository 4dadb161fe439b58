"""Training of the VAE (baseline and retrain share this recipe) and the data a model job reads.

Adam, mini-batches by index over one dense count tensor on the device, KL warm-up,
early stopping on validation ELBO with the best epoch restored, one log line per epoch
(``epoch i/max``, counted from 1, with the elapsed time and an ETA; the history's ``epoch``
column counts from 0). Checkpoints are :mod:`scunlearn.vae.checkpoints`'.
"""

from __future__ import annotations

import copy
import logging
import time
from typing import TYPE_CHECKING, Callable

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from scunlearn import ScunlearnError
from scunlearn.costs import Progress
from scunlearn.vae.likelihood import count_codes_cached, log_factorial_cached
from scunlearn.vae.model import VAE, elbo

if TYPE_CHECKING:  # anndata is imported only where a stage reads or writes an AnnData
    from anndata import AnnData

log = logging.getLogger(__name__)


def counts_tensor(adata: AnnData, device: torch.device | str = "cpu") -> torch.Tensor:
    """The whole raw-count matrix (``layers['counts']``) as one dense float32 tensor."""
    X = adata.layers["counts"] if "counts" in adata.layers else adata.X
    X = X.toarray() if sp.issparse(X) else np.asarray(X)
    return torch.as_tensor(np.ascontiguousarray(X, dtype=np.float32), device=device)


def kl_weight(epoch: int, warmup_epochs: int) -> float:
    """β for a 0-based epoch: linear from 0 to 1 over ``warmup_epochs`` (1 if no warm-up)."""
    return 1.0 if warmup_epochs <= 0 else min(1.0, epoch / warmup_epochs)


def adam(params, lr: float, weight_decay: float = 0.0):
    """Adam as training uses it: the fused single-kernel update (3-5x faster per step than the
    default), through :class:`scunlearn.optim.Adam` (no ``torch._dynamo`` import) where the
    parameters are on the CPU or CUDA, else ``torch.optim.Adam``."""
    from scunlearn.vae.optim import Adam

    params = list(params)
    if hasattr(torch, "_fused_adam_") and all(
            p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in params):
        return Adam(params, lr, weight_decay=weight_decay)
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)










def rows_loss(model: VAE, X: torch.Tensor, rows: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    """``model.loss`` of rows ``rows`` of the count tensor X, with X's cached log-factorials and NB
    table rows (:func:`log_factorial_cached`, :func:`count_codes_cached`): the batch loss of training."""
    x = X.index_select(0, rows)  # the same rows as X[rows]; advanced indexing is slower on CPU
    return model.loss(x, beta, log_factorial=log_factorial_cached(X).index_select(0, rows),
                      counts=count_codes_cached(X).index(rows, x))


def run_epoch(model: VAE, opt: torch.optim.Optimizer, X: torch.Tensor, idx: torch.Tensor,
              batch_size: int, beta: float, gen: torch.Generator,
              objective: Callable[[torch.Tensor], torch.Tensor] | None = None) -> float:
    """One pass over rows ``idx`` in a seeded random order; returns the mean batch loss.

    The loss is summed on the device and read back once per epoch (no host sync per batch).
    ``objective(batch_loss)``, if given, is what is minimised instead of each batch's loss
    (``neggrad_plus`` adds its forget-cell ascent); the returned mean is still the batch loss's.
    """
    model.train()
    perm = idx[torch.randperm(len(idx), generator=gen).to(idx.device)]
    total = torch.zeros((), dtype=torch.float64, device=X.device)
    n = 0
    for s in range(0, len(perm), batch_size):
        b = perm[s:s + batch_size]
        if len(b) < 2:  # LayerNorm/BatchNorm-free, but a 1-cell batch is pure noise
            continue
        loss = rows_loss(model, X, b, beta)
        opt.zero_grad(set_to_none=True)
        (loss if objective is None else objective(loss)).backward()
        opt.step()
        total += loss.detach() * len(b)
        n += len(b)
    return float(total) / max(n, 1)


def fit(model: VAE, X: torch.Tensor, train_idx, val_idx, *, lr: float, batch_size: int, max_epochs: int,
        kl_warmup_epochs: int, patience: int, seed: int, min_delta: float = 0.0) -> pd.DataFrame:
    """Train ``model`` in place on rows ``train_idx``; early-stop on validation ELBO.

    The weights of the best validation epoch are restored at the end. Returns the
    per-epoch history (epoch, train_loss, val_elbo, kl_weight, seconds, best).
    """
    dev = X.device
    train_idx = torch.as_tensor(np.asarray(train_idx), dtype=torch.long, device=dev)
    val_idx = np.asarray(val_idx)
    gen = torch.Generator().manual_seed(int(seed))
    opt = adam(model.parameters(), lr)
    best, best_state, best_epoch, bad = -np.inf, None, -1, 0
    rows = []
    progress = Progress(max_epochs, "epoch", upper_bound=True)
    for epoch in range(max_epochs):
        t0 = time.perf_counter()
        beta = kl_weight(epoch, kl_warmup_epochs)
        train_loss = run_epoch(model, opt, X, train_idx, batch_size, beta, gen)
        val = elbo(model, X, val_idx)
        if not np.isfinite(train_loss) or not np.isfinite(val):
            raise ScunlearnError(
                f"training diverged at epoch {epoch} (loss {train_loss}, val ELBO {val}); lower train.lr")
        improved = val > best + min_delta
        if improved:
            best, best_state, best_epoch, bad = val, copy.deepcopy(model.state_dict()), epoch, 0
        else:
            bad += 1
        secs = time.perf_counter() - t0
        rows.append({"epoch": epoch, "train_loss": train_loss, "val_elbo": val, "kl_weight": beta,
                     "seconds": secs, "best": improved})
        log.info("%s  train_loss %.3f  val_elbo %.3f  kl_weight %.2f  %.2fs%s  %s", progress.count(epoch + 1),
                 train_loss, val, beta, secs, "  *" if improved else "", progress.timing(epoch + 1))
        # no early stop while β is still warming up: the ELBO scale changes under it
        if bad >= patience and epoch >= kl_warmup_epochs:
            log.info("early stop after epoch %d of at most %d; best epoch %d (val_elbo %.3f)", epoch + 1, max_epochs,
                     best_epoch + 1, best)
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    return pd.DataFrame(rows)


def load_experiment(inp: dict, device):
    """AnnData, count tensor and partition for one forget set (or just the split): what a model job reads."""
    from scunlearn.costs import log_ready
    from scunlearn.data.splits import load_partition
    from scunlearn.io import read_cells

    adata = read_cells(inp["adata"])
    part = load_partition(adata, inp["split"], inp.get("forget"))
    X = counts_tensor(adata, device)
    log_ready(log, "counts on the device")
    return adata, X, part
