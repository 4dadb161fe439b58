"""Extragradient for smooth games (Korpelevich; Chavdarova et al. 2019), over any torch optimizers.

Each step: gradients at (θ_k, ψ_k) → extrapolate every player to (θ_½, ψ_½) with its own
optimizer; gradients there → restore (θ_k, ψ_k) and the optimizers' states → update
with the extrapolated gradients. Simultaneous gradient descent–ascent spirals away
from the equilibrium of a bilinear game; this converges to it.
"""

from __future__ import annotations

import copy
from typing import Callable, Sequence

import torch


class ExtraGradient:
    """Extragradient step over several players' optimizers.

    ``compute_grads()`` must fill ``.grad`` of every player's parameters with the gradient
    of *that player's own* loss at the current parameters (each player minimises its loss).
    """

    def __init__(self, optimizers: Sequence[torch.optim.Optimizer]):
        self.optimizers = list(optimizers)
        self.params = [p for opt in self.optimizers for g in opt.param_groups for p in g["params"]]

    def _zero(self) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)

    def step(self, compute_grads: Callable[[], None]) -> None:
        saved = [p.detach().clone() for p in self.params]
        states = [copy.deepcopy(opt.state_dict()) for opt in self.optimizers]
        self._zero()
        compute_grads()                      # gradients at (θ_k, ψ_k)
        for opt in self.optimizers:          # extrapolation to (θ_½, ψ_½)
            opt.step()
        self._zero()
        compute_grads()                      # gradients at (θ_½, ψ_½)
        grads = [None if p.grad is None else p.grad.detach().clone() for p in self.params]
        with torch.no_grad():                # back to (θ_k, ψ_k), optimizer states too
            for p, s in zip(self.params, saved):
                p.copy_(s)
        for opt, st in zip(self.optimizers, states):
            opt.load_state_dict(st)
        for p, g in zip(self.params, grads):
            p.grad = g
        for opt in self.optimizers:          # the update from θ_k with the extrapolated gradients
            opt.step()


def simultaneous_step(optimizers: Sequence[torch.optim.Optimizer], compute_grads: Callable[[], None]) -> None:
    """Plain simultaneous gradient descent(–ascent): one gradient evaluation, every player steps."""
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)
    compute_grads()
    for opt in optimizers:
        opt.step()
