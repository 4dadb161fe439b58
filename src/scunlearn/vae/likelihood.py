"""The negative-binomial likelihood of the VAE in one place: the elementwise log NB, the count
tables that replace lgamma / digamma, the training NLL's autograd Function (solo, batched over
ensemble members, per cell for DP), the KL term, and the per-data-set caches they read.
"""

from __future__ import annotations

import weakref
from typing import Callable

import torch
from torch.autograd.function import once_differentiable

EPS = 1e-8


def nb_log_likelihood(x: torch.Tensor, mean: torch.Tensor, theta: torch.Tensor,
                      log_mean: torch.Tensor | None = None) -> torch.Tensor:
    """Elementwise log NB(x; mean, inverse dispersion theta) — scipy's nbinom(n=θ, p=θ/(θ+mean)).

    ``log_mean``: log(mean) when the caller has it exactly (the VAE's log-softmax plus log
    library size); otherwise log(mean + EPS) guards against log 0.
    """
    log_theta_mu = torch.log(theta + mean + EPS)
    if log_mean is None:
        log_mean = torch.log(mean + EPS)
    return (
        torch.lgamma(x + theta)
        - torch.lgamma(theta)
        - torch.lgamma(x + 1.0)
        + theta * (torch.log(theta + EPS) - log_theta_mu)
        + x * (log_mean - log_theta_mu)
    )


COUNT_TABLE = 32  # integer counts below this read lgamma / digamma differences from per-gene tables


class CountIndex:
    """Counts x (cells x genes) as row indices into per-gene tables over k = 0..COUNT_TABLE-1.

    ``lgamma(x + θ) - lgamma(θ) = Σ_{j<x} log(θ + j)`` and ``ψ(x + θ) - ψ(θ) = Σ_{j<x} 1/(θ + j)``
    for integer x, so a cumulative sum over a COUNT_TABLE x genes table and one gather
    replace an ``lgamma`` / ``digamma`` per entry (10-25x the cost of a multiply on CPU).
    Entries that are large or not integers (``odd``) are computed directly.
    """

    def __init__(self, x: torch.Tensor, k: torch.Tensor | None = None,
                 odd: tuple[torch.Tensor, torch.Tensor] | None = None):
        self.x = x
        if k is None:  # from x itself; CountCodes.index gives k and odd from a per-data-set cache
            k = x.to(torch.int64).clamp_(0, COUNT_TABLE - 1)
            mask = x != k
            odd = mask.nonzero(as_tuple=True) if bool(mask.any()) else None
        self.k, self.odd = k, odd

    def _shift(self, theta: torch.Tensor, term, exact) -> torch.Tensor:
        theta_odd = None if self.odd is None else theta[self.odd[1]]
        return count_shift(self.x, self.k, self.odd, theta.unsqueeze(0), theta_odd, term, exact)

    def lgamma_shift(self, theta: torch.Tensor) -> torch.Tensor:
        """lgamma(x + θ) - lgamma(θ) for per-gene θ."""
        return self._shift(theta, torch.log, torch.lgamma)

    def digamma_shift(self, theta: torch.Tensor) -> torch.Tensor:
        """ψ(x + θ) - ψ(θ) for per-gene θ."""
        return self._shift(theta, torch.reciprocal, torch.digamma)


def count_shift(x: torch.Tensor, k: torch.Tensor, odd: tuple | None, theta: torch.Tensor,
                theta_odd: torch.Tensor | None, term, exact) -> torch.Tensor:
    """Σ_{j<x} term(θ + j) for every entry of x, by table: :class:`CountIndex`'s (θ (1, G), k (B, G))
    and the ensemble's member-wise one (θ (K, 1, G), k (K, B, G)) in one definition.

    ``table[..., j, g] = Σ_{i<j} term(θ_g + i)`` along the second-last axis, gathered at k. The
    ``odd`` entries (an index tuple into x), beyond the table or not integers, get
    ``exact(x + θ) − exact(θ)`` with ``theta_odd`` their θ.
    """
    j = torch.arange(COUNT_TABLE - 1, dtype=theta.dtype, device=theta.device).unsqueeze(-1)
    table = torch.cat([theta.new_zeros(theta.shape), term(theta + j).cumsum(-2)], -2)
    out = table.gather(-2, k)
    if odd is not None:
        out[odd] = exact(x[odd] + theta_odd) - exact(theta_odd)
    return out


class CountCodes:
    """The table rows of a whole count matrix, computed once: what :class:`CountIndex` needs per batch.

    ``codes`` (uint8, cells x genes) holds each integer count below ``COUNT_TABLE``, and 0 for
    the other ("odd") entries, whose columns are kept per row in CSR form (``ptr``, ``cols``).
    A batch then costs one uint8 gather and a widening instead of a float-to-int64
    conversion, a clamp, a mixed-type comparison and a ``nonzero`` over the batch.
    """

    def __init__(self, X: torch.Tensor, chunk: int = 4096):
        codes, counts, cols = [], [], []
        with torch.no_grad():
            for s in range(0, len(X), chunk):
                ci = CountIndex(X[s:s + chunk])     # the one definition of table rows and odd entries
                k = ci.k
                if ci.odd is None:
                    counts.append(k.new_zeros(len(k)))
                else:
                    rows, c = ci.odd                  # row-major: each row's columns in order
                    k[rows, c] = 0
                    counts.append(torch.bincount(rows, minlength=len(k)))
                    cols.append(c)
                codes.append(k.to(torch.uint8))
        dev = X.device
        self.codes = torch.cat(codes) if codes else torch.zeros(X.shape, dtype=torch.uint8, device=dev)
        per_row = torch.cat(counts) if counts else torch.zeros(0, dtype=torch.int64, device=dev)
        self.ptr = torch.cat([per_row.new_zeros(1), per_row.cumsum(0)])
        self.cols = torch.cat(cols) if cols else torch.zeros(0, dtype=torch.int64, device=dev)
        self.n_odd = int(self.ptr[-1])

    def index(self, rows: torch.Tensor, x: torch.Tensor) -> CountIndex:
        """The :class:`CountIndex` of ``x`` = the matrix's rows ``rows`` (the caller's batch)."""
        k = self.codes.index_select(0, rows).long()  # on CPU ~10x faster than codes[rows] for uint8
        if self.n_odd == 0:
            return CountIndex(x, k, None)
        start = self.ptr[rows]
        per_row = self.ptr[rows + 1] - start
        total = int(per_row.sum())
        if total == 0:
            return CountIndex(x, k, None)
        batch_row = torch.repeat_interleave(torch.arange(len(rows), device=rows.device), per_row)
        first = per_row.cumsum(0) - per_row              # where each row's run starts in the output
        pos = start[batch_row] + torch.arange(total, device=rows.device) - first[batch_row]
        return CountIndex(x, k, (batch_row, self.cols[pos]))


def nb_forward(ctx, logits: torch.Tensor, log_theta: torch.Tensor, x: torch.Tensor,
               library: torch.Tensor, counts=None) -> torch.Tensor:
    """Per-cell −Σ_g log NB(x | L·softmax(logits), θ) − Σ_g lgamma(x + 1): :class:`NBNLL`'s forward, saving what
    :func:`nb_backward` needs on ``ctx`` (None: value only).

    One model: logits / x (B, G), log θ (G,), library (B, 1), returns (B,). Ensemble members:
    logits / x (K, B, G), log θ (K, G), library (K, B, 1), returns (K, B). ``counts``: x's count
    table rows (:class:`CountIndex` from a :class:`CountCodes`, :class:`MemberCounts` /
    :class:`ExactCounts` for members; built here for one model when None).
    """
    theta = log_theta.exp()
    if theta.dim() == 2:  # members: (K, 1, G)
        theta = theta.unsqueeze(1)
    theta_eps = theta + EPS
    counts = CountIndex(x) if counts is None else counts
    log_p = torch.log_softmax(logits, dim=-1)
    p = log_p.exp()
    mean = p * library
    denom = mean + theta_eps                    # θ + mean + EPS
    log_denom = denom.log()
    xt = x + theta
    # lgamma(x+θ) - lgamma(θ) + x log(mean) - (x+θ) log(θ+mean+EPS) + θ log(θ+EPS), with
    # Σ_g x log(mean) = Σ_g x log p + L log L (L = Σ_g x, the library): no log per entry
    ll = counts.lgamma_shift(theta)
    ll.addcmul_(x, log_p).addcmul_(xt, log_denom, value=-1.0)
    log_theta_eps = theta_eps.log()
    if ctx is not None:
        ctx.counts = counts
        ctx.save_for_backward(p, mean, denom, log_denom, xt, theta, log_theta_eps)
    lib = library.squeeze(-1)
    return -(ll.sum(-1) + torch.special.xlogy(lib, lib) + (theta * log_theta_eps).sum(-1))


def nb_backward(ctx, grad: torch.Tensor):
    """(grad of the logits or None, e or None, g, const, θ) for :func:`nb_forward`'s output.

    The θ gradient of cell c is ``g_c (e_c + const)`` per gene, with e = ψ(x+θ) − ψ(θ) −
    log(θ+mean+EPS) − r (cells x genes) and const = log(θ+EPS) + θ/(θ+EPS) (genes): the
    caller sums it over cells (training) or keeps it per cell (per-sample gradients).
    """
    p, mean, denom, log_denom, xt, theta, log_theta_eps = ctx.saved_tensors
    x = ctx.counts.x
    g = -grad.unsqueeze(-1)                     # the output is -ll: d out / d ll = -1
    r = xt / denom                              # (x + θ) / (θ + mean + EPS)
    grad_logits = e = None
    if ctx.needs_input_grad[0]:
        # d ll / d log mean = x - mean · r; through log-softmax: a - p Σ a
        a = torch.addcmul(x, mean, r, value=-1.0)
        grad_logits = a.addcmul_(p, a.sum(-1, keepdim=True), value=-1.0).mul_(g)
    if ctx.needs_input_grad[1]:
        e = ctx.counts.digamma_shift(theta).sub_(log_denom).sub_(r)
    return grad_logits, e, g, log_theta_eps + theta / (theta + EPS), theta


def log_factorial_rows(x: torch.Tensor) -> torch.Tensor:
    """Σ_g lgamma(x + 1) per cell: the parameter-free part of the NB log-likelihood."""
    return torch.lgamma(x + 1.0).sum(-1)


def kl_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) ‖ N(0, I)) per row, summed over latent dimensions."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(-1)


_CACHE: dict[tuple[str, int], tuple] = {}


def _cached(kind: str, X: torch.Tensor, build: Callable[[torch.Tensor], object]):
    """``build(X)`` once per count tensor and kind, checked against X's identity, storage, shape and
    version (an in-place change rebuilds it) and dropped with the tensor."""
    key = (kind, id(X))
    stamp = (X.data_ptr(), tuple(X.shape), X.dtype, X._version)
    hit = _CACHE.get(key)
    if hit is not None and hit[0] == stamp:
        return hit[1]
    with torch.no_grad():
        value = build(X)
    if hit is None:
        weakref.finalize(X, _CACHE.pop, key, None)
    _CACHE[key] = (stamp, value)
    return value


def log_factorial_cached(X: torch.Tensor) -> torch.Tensor:
    """:func:`log_factorial_rows` of every row of X, computed once per count tensor.

    It does not depend on the parameters, so training computes it once per data set
    instead of once per batch (an ``lgamma`` over the batch).
    """
    def build(X):
        chunks = [log_factorial_rows(X[s:s + 4096]) for s in range(0, len(X), 4096)]
        return torch.cat(chunks) if chunks else X.new_zeros(0)
    return _cached("log_factorial", X, build)


def count_codes_cached(X: torch.Tensor) -> CountCodes:
    """The :class:`CountCodes` of X (the NB term's table rows), computed once per count tensor."""
    return _cached("count_codes", X, CountCodes)


class MemberCounts:
    """Counts x (K, B, G) as rows of per-member, per-gene tables: :class:`CountIndex`
    with a member axis (each member has its own θ, so its own tables)."""

    def __init__(self, x: torch.Tensor, k: torch.Tensor, odd: tuple[torch.Tensor, ...] | None):
        self.x, self.k, self.odd = x, k, odd  # odd: (member, row, gene) of entries not in the tables

    @classmethod
    def of(cls, x: torch.Tensor, index) -> MemberCounts:
        """From a flat :class:`CountIndex` of ``x.view(K * B, G)``."""
        K, B, G = x.shape
        odd = None
        if index.odd is not None:
            rows, cols = index.odd
            odd = (torch.div(rows, B, rounding_mode="floor"), rows % B, cols)
        return cls(x, index.k.view(K, B, G), odd)

    def _shift(self, theta: torch.Tensor, term, exact) -> torch.Tensor:
        # theta (K, 1, G): member m's table from its own θ; an odd entry (m, r, c) takes θ[m, 0, c]
        theta_odd = None if self.odd is None else theta[self.odd[0], 0, self.odd[2]]
        return count_shift(self.x, self.k, self.odd, theta, theta_odd, term, exact)

    def lgamma_shift(self, theta: torch.Tensor) -> torch.Tensor:
        return self._shift(theta, torch.log, torch.lgamma)

    def digamma_shift(self, theta: torch.Tensor) -> torch.Tensor:
        return self._shift(theta, torch.reciprocal, torch.digamma)


class ExactCounts:
    """Counts x (K, B, G) whose lgamma / digamma shifts are computed for every entry, without
    :class:`MemberCounts`'s tables: the same values up to float rounding (table[j] = Σ_{i<j} log(θ + i) =
    lgamma(θ + j) − lgamma(θ)), with no data-dependent shapes (the tables' list of counts beyond them
    is a ``nonzero``), so a step that uses them can be captured in a CUDA graph. Element-wise
    lgamma / digamma cost a CPU several times the table gather, a GPU next to nothing."""

    def __init__(self, x: torch.Tensor):
        self.x = x

    def lgamma_shift(self, theta: torch.Tensor) -> torch.Tensor:
        return torch.lgamma(self.x + theta).sub_(torch.lgamma(theta))

    def digamma_shift(self, theta: torch.Tensor) -> torch.Tensor:
        return torch.digamma(self.x + theta).sub_(torch.digamma(theta))


class NBNLL(torch.autograd.Function):
    """:func:`nb_forward` with a hand-written backward: the training loss's NB term, for one model, for
    ensemble members (log θ (K, G)), or with θ per cell (``per_cell``: log θ given as (B, G) equal
    rows, as DP training's grad sampler needs).

    Same value as ``-nb_log_likelihood(x, softmax(h) * L, θ, log_softmax(h) + log L).sum(-1)`` without its
    parameter-free ``lgamma(x + 1)`` term (the caller adds that per-cell constant), but with about a
    third of the passes over the cells × genes batch that autograd's graph of the elementwise formula
    makes, and no lgamma / digamma per entry: these were the training step's largest non-matmul costs.
    The θ gradient is summed over cells (one model, each member) or kept per cell (``per_cell``), whose
    sum over cells is the former: what per-sample gradients need.
    """

    @staticmethod
    def forward(ctx, logits, log_theta, x, library, counts=None, per_cell=False):
        ctx.per_cell = per_cell
        return nb_forward(ctx, logits, log_theta[0] if per_cell else log_theta, x, library, counts)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        grad_logits, e, g, const, theta = nb_backward(ctx, grad)
        if e is None:
            grad_log_theta = None
        elif ctx.per_cell:  # per cell: g · (ψ(x+θ) − ψ(θ) − log(θ+μ+EPS) − r + log(θ+EPS) + θ/(θ+EPS)) · θ
            grad_log_theta = e.add_(const).mul_(g).mul_(theta)
        elif theta.dim() == 3:  # per member: Σ_c g_c (e_c + const), times dθ/dlog θ = θ; g (K, B, 1)
            grad_log_theta = ((torch.bmm(g.transpose(1, 2), e) + g.sum(1, keepdim=True) * const) * theta).squeeze(1)
        else:  # summed over cells: Σ_c g_c (e_c + const), times dθ/dlog θ = θ
            grad_log_theta = (torch.mv(e.t(), g.squeeze(-1)) + g.sum() * const) * theta
        return grad_logits, grad_log_theta, None, None, None, None
