"""Dropout for the VAE: 16-bit uniform masks (a third of ``bernoulli_``'s cost) drawn for all layers at once."""

from __future__ import annotations

import math

import torch
from torch import nn

_DROP_LEVELS = 1 << 16  # dropout draws 16-bit uniforms: four per 64-bit random word


def dropout_keep(shape: torch.Size, p: float, device: torch.device | str = "cpu") -> tuple[torch.Tensor, float]:
    """(keep mask, scale) of inverted dropout: each entry kept with probability 1 - p', scaled by 1 / (1 - p').

    p' = round(p · 2¹⁶) / 2¹⁶ (|p' - p| ≤ 2⁻¹⁷), so E[mask · scale] = 1 exactly. Each 64-bit
    word of the global generator gives four 16-bit uniforms: on CPU a mask costs about a
    third of ``bernoulli_``'s, which draws one 32-bit number and a float compare per entry and was
    the training step's largest non-matmul cost (9-11% of a step).
    """
    uniform16, threshold, scale = _uniform16(shape, p, device)
    return uniform16 >= threshold, scale


def _uniform16(shape: torch.Size, p: float, device, generator: torch.Generator | None = None
               ) -> tuple[torch.Tensor, int, float]:
    """(16-bit uniforms of ``shape``, keep threshold, scale) of :func:`dropout_keep`; from ``generator``
    if given (the batched ensemble's per-member streams), else torch's global one."""
    k = round(p * _DROP_LEVELS)
    n = math.prod(shape)
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_(-(1 << 63), None,
                                                                                 generator=generator)
    uniform16 = words.view(torch.int16)[:n].view(shape)   # uniform over -2^15 .. 2^15 - 1
    return uniform16, k - (_DROP_LEVELS >> 1), _DROP_LEVELS / (_DROP_LEVELS - k)


def dropout_mask(shape: torch.Size, p: float, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32, generator: torch.Generator | None = None,
                 out: torch.Tensor | None = None) -> torch.Tensor:
    """The multiplicative mask of inverted dropout, keep · scale, from the same draws as :func:`dropout_keep`.

    The comparison writes 1.0 / 0.0 straight into a float tensor, scaled in place: on CPU
    less than half the time of a bool mask times the scale (a bool-to-float copy and a multiply).
    ``generator``: the random stream (default torch's global one); ``out``: a tensor of ``shape`` to write it in.
    """
    uniform16, threshold, scale = _uniform16(shape, p, device, generator)
    mask = torch.empty(shape, dtype=dtype, device=device) if out is None else out
    return torch.ge(uniform16, threshold, out=mask).mul_(scale)


class Dropout(nn.Dropout):
    """``nn.Dropout`` (same module, state and eval behaviour) with masks from :func:`dropout_keep`.

    A mask set beforehand by :func:`arm_dropout` (all of a model's layers drawn at once) is
    used once; without one, the layer draws its own.
    """

    mask: torch.Tensor | None = None  # set by arm_dropout, consumed by the next forward
    width: int | None = None  # the width of its input (set by the VAE's layers), which arm_dropout needs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        mask = self.mask
        if mask is not None:
            self.mask = None
            if mask.shape == x.shape:
                return x * (mask if mask.dtype == x.dtype else mask.to(x.dtype))
        if self.p >= 1.0:
            return x * 0.0
        return x * dropout_mask(x.shape, self.p, x.device, x.dtype)


def arm_dropout(stacks, n_rows: int, device: torch.device) -> None:
    """Draw the masks of every :class:`Dropout` in ``stacks`` (the layers one forward pass runs, in
    order) for ``n_rows`` rows at once: one random draw, one compare and one multiply for all.

    Per layer, a mask cost four small ops (~10-30 µs each on CPU, whatever the size), and
    dropout was ~15% of a demo-size training step. Each layer's mask is a slice of one
    :func:`dropout_keep` block, so it has the distribution of the layer's own draw.
    """
    drops = [m for stack in stacks for m in stack if isinstance(m, Dropout) and m.training and 0.0 < m.p < 1.0]
    if not drops:
        return
    p = drops[0].p
    if any(d.p != p or d.width is None for d in drops):  # mixed rates or unknown widths: each layer draws its own
        return
    widths = [d.width for d in drops]
    sizes = [n_rows * w for w in widths]
    for d, m, w in zip(drops, dropout_mask((sum(sizes),), p, device).split(sizes), widths):
        d.mask = m.view(n_rows, w)
