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
        states = [_snapshot(opt) for opt in self.optimizers]
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
            _restore(opt, st)
        for p, g in zip(self.params, grads):
            p.grad = g
        for opt in self.optimizers:          # the update from θ_k with the extrapolated gradients
            opt.step()


def _snapshot(opt: torch.optim.Optimizer) -> tuple[list[dict], list[dict | None]]:
    """The optimizer's hyper-parameters and per-parameter state, tensors cloned: what
    ``deepcopy(opt.state_dict())`` saves, without its per-step pickling-style walk (a third of
    an extragradient step on the demo's model)."""
    groups = [{k: copy.deepcopy(v) for k, v in g.items() if k != "params"} for g in opt.param_groups]
    state = [None if p not in opt.state else
             {k: v.clone() if torch.is_tensor(v) else copy.deepcopy(v) for k, v in opt.state[p].items()}
             for g in opt.param_groups for p in g["params"]]
    return groups, state


def _restore(opt: torch.optim.Optimizer, snap: tuple[list[dict], list[dict | None]]) -> None:
    """Put back what :func:`_snapshot` saved: state tensors copied in place, state created since dropped."""
    groups, state = snap
    for g, saved in zip(opt.param_groups, groups):
        g.update(saved)
    for p, saved in zip((p for g in opt.param_groups for p in g["params"]), state):
        if saved is None:
            opt.state.pop(p, None)
            continue
        cur = opt.state[p]
        for k in [k for k in cur if k not in saved]:
            del cur[k]
        for k, v in saved.items():
            if torch.is_tensor(v) and torch.is_tensor(cur.get(k)) and cur[k].shape == v.shape:
                cur[k].copy_(v)
            else:
                cur[k] = v


def simultaneous_step(optimizers: Sequence[torch.optim.Optimizer], compute_grads: Callable[[], None]) -> None:
    """Plain simultaneous gradient descent(–ascent): one gradient evaluation, every player steps."""
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)
    compute_grads()
    for opt in optimizers:
        opt.step()
