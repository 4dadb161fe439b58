"""Machine-independent compute of an unlearning run: cell passes with gradient through a VAE.

Wall time depends on the machine and on what else runs on it; the number of cells a method
pushes through the VAE with gradients on (a training step's forward + backward, a per-sample
gradient of a Fisher) does not. A retrain costs ``epochs_run × n_train`` such passes, so
``compute_vs_retrain`` = a method's passes over its retrain's: the cost axis of the frontier
that another machine reproduces. Evaluation passes (no gradient) are not counted; neither is
the work of attackers and critics (their networks are not the VAE), which wall time shows.
"""

from __future__ import annotations

import torch
from torch.nn.modules.module import register_module_forward_hook


def _plain(x) -> bool:
    """A tensor outside torch.func transforms (inside vmap / grad its leading dimension is not the batch)."""
    f = torch._C._functorch
    return isinstance(x, torch.Tensor) and not (f.is_batchedtensor(x) or f.is_gradtrackingtensor(x))


class CellMeter:
    """Counts, while active, the rows entering any VAE encoder (modules marked ``counts_cells``) with
    gradients enabled, plus what code counts itself with :meth:`add` (per-sample gradients under vmap)."""

    _current: "CellMeter | None" = None

    def __init__(self):
        self.cells = 0
        self._handle = None

    def __enter__(self) -> "CellMeter":
        self._handle = register_module_forward_hook(self._hook)
        CellMeter._current = self
        return self

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            self._handle.remove()
        CellMeter._current = None

    def _hook(self, module, args, output) -> None:
        if getattr(module, "counts_cells", False) and torch.is_grad_enabled() and args and _plain(args[0]):
            self.cells += int(args[0].shape[0])

    @classmethod
    def add(cls, n: int) -> None:
        """Count ``n`` cell passes done where the hook cannot see them (vmapped per-sample gradients, a stacked
        model); nothing when no meter is active."""
        if cls._current is not None:
            cls._current.cells += int(n)
