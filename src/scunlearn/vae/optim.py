"""Extragradient for smooth games (Korpelevich; Chavdarova et al. 2019), over any torch optimizers,
and the fused Adam that training and the methods step with (:class:`Adam`).

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
        # kept as they are (restoring touches no .grad), unless one shares its parameter's memory
        grads = [p.grad.detach().clone() if p.grad is not None and _shares_memory(p.grad, p) else p.grad
                 for p in self.params]
        with torch.no_grad():                # back to (θ_k, ψ_k), optimizer states too
            for p, s in zip(self.params, saved):
                p.copy_(s)
        for opt, st in zip(self.optimizers, states):
            _restore(opt, st)
        for p, g in zip(self.params, grads):
            p.grad = g
        for opt in self.optimizers:          # the update from θ_k with the extrapolated gradients
            opt.step()


def _shares_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


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


class Adam:
    """Adam (L2 weight decay, no amsgrad) stepping with the fused kernel ``torch._fused_adam_`` directly.

    The same update, state and numbers as ``torch.optim.Adam(..., fused=True)`` (a test checks
    them bit for bit), without ``torch.optim.Optimizer``'s step wrappers: their first call
    imports ``torch._dynamo``, 1-1.7 s of CPU in every training and unlearning job of the
    workflow. It has what this project's code uses of an optimizer: ``param_groups``,
    ``state``, ``step()`` and ``zero_grad()``. Use :func:`scunlearn.vae.train.adam` to get one.
    """

    def __init__(self, params, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        params = list(params)
        if not all(torch.is_tensor(p) and p.dtype.is_floating_point and p.device.type in ("cpu", "cuda")
                   for p in params):
            raise ValueError("scunlearn.vae.optim.Adam takes floating-point CPU or CUDA tensors only")
        self.param_groups = [{"params": params, "lr": float(lr), "betas": tuple(betas), "eps": float(eps),
                              "weight_decay": float(weight_decay)}]
        self.state: dict[torch.Tensor, dict] = {}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for g in self.param_groups:
            for p in g["params"]:
                if set_to_none:
                    p.grad = None
                elif p.grad is not None:
                    p.grad.detach_().zero_()

    @torch.no_grad()
    def step(self) -> None:
        for g in self.param_groups:
            by_kind: dict[tuple, list[torch.Tensor]] = {}
            for p in g["params"]:
                if p.grad is not None:
                    by_kind.setdefault((p.device, p.dtype), []).append(p)
            for params in by_kind.values():
                if not any(p in self.state for p in params):
                    # the step counters as 0-d views of one tensor: a step counts them all with one add
                    counters = torch.zeros(len(params), dtype=torch.float32, device=params[0].device)
                    for p, step in zip(params, counters.unbind()):
                        self.state[p] = _new_state(p, step)
                states = []
                for p in params:
                    st = self.state.get(p)
                    if st is None:  # a parameter that got its first gradient later than the others
                        st = self.state[p] = _new_state(p, torch.zeros((), dtype=torch.float32, device=p.device))
                    states.append(st)
                steps = [st["step"] for st in states]
                _count_steps(steps)
                torch._fused_adam_(params, [_as_laid_out(p.grad, p) for p in params], [st["exp_avg"] for st in states],
                                   [st["exp_avg_sq"] for st in states], [], steps, amsgrad=False, lr=g["lr"],
                                   beta1=g["betas"][0], beta2=g["betas"][1], weight_decay=g["weight_decay"],
                                   eps=g["eps"], maximize=False, grad_scale=None, found_inf=None)


def _new_state(p: torch.Tensor, step: torch.Tensor) -> dict[str, torch.Tensor]:
    """A parameter's Adam state at step 0, as ``torch.optim.Adam(fused=True)`` creates it."""
    return {"step": step, "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
            "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format)}


def _count_steps(steps: list[torch.Tensor]) -> None:
    """Add 1 to every step counter: one ``add_`` when they are, in order, all the elements of one
    tensor (as :class:`Adam` creates them), else one per counter (``_foreach_add_`` on CPU makes
    one small op per tensor: ~0.25 ms a step for the VAE's 31 parameters, 1% of a batch-128 step)."""
    base = steps[0]._base if steps else None
    if (base is not None and base.dim() == 1 and len(base) == len(steps) and base.is_contiguous()
            and all(s._base is base and s.storage_offset() == base.storage_offset() + i
                    for i, s in enumerate(steps))):
        base.add_(1)
    else:
        torch._foreach_add_(steps, 1)


def _as_laid_out(grad: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """``grad`` with ``param``'s memory layout (a copy only when the strides differ).

    The fused kernel walks parameter, gradient and state as flat memory: a gradient laid out
    otherwise (a transposed one from ``torch.autograd.grad`` of a batched matmul, which
    ``.backward()`` would have re-laid into ``.grad``) is read in the wrong element order and
    the update is garbage, silently (torch 2.13 CPU; ``torch.optim.Adam(fused=True)`` too).
    """
    if grad.stride() == param.stride():
        return grad
    return torch.empty_like(param).copy_(grad)


def simultaneous_step(optimizers: Sequence[torch.optim.Optimizer], compute_grads: Callable[[], None]) -> None:
    """Plain simultaneous gradient descent(–ascent): one gradient evaluation, every player steps."""
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)
    compute_grads()
    for opt in optimizers:
        opt.step()
