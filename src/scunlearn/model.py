"""The scVI-like VAE with a real negative-binomial likelihood on raw counts.

Encoder: log1p(counts) → hidden layers → (μ, log σ²). Decoder: z → hidden layers
(reversed) → softmax over genes, times the cell's observed library size = NB mean;
per-gene inverse dispersion θ. Each hidden layer is Linear → LayerNorm → ReLU → Dropout.
Loss per cell: −log NB(x | z) + β · KL(q(z|x) ‖ N(0, I)).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import NamedTuple

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from . import ScunlearnError

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


class _CountIndex:
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
    """Σ_{j<x} term(θ + j) for every entry of x, by table: :class:`_CountIndex`'s (θ (1, G), k (B, G))
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
    """The table rows of a whole count matrix, computed once: what :class:`_CountIndex` needs per batch.

    ``codes`` (uint8, cells x genes) holds each integer count below ``COUNT_TABLE``, and 0 for
    the other ("odd") entries, whose columns are kept per row in CSR form (``ptr``, ``cols``).
    A batch then costs one uint8 gather and a widening instead of a float-to-int64
    conversion, a clamp, a mixed-type comparison and a ``nonzero`` over the batch.
    """

    def __init__(self, X: torch.Tensor, chunk: int = 4096):
        codes, counts, cols = [], [], []
        with torch.no_grad():
            for s in range(0, len(X), chunk):
                ci = _CountIndex(X[s:s + chunk])     # the one definition of table rows and odd entries
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

    def index(self, rows: torch.Tensor, x: torch.Tensor) -> _CountIndex:
        """The :class:`_CountIndex` of ``x`` = the matrix's rows ``rows`` (the caller's batch)."""
        k = self.codes.index_select(0, rows).long()  # on CPU ~10x faster than codes[rows] for uint8
        if self.n_odd == 0:
            return _CountIndex(x, k, None)
        start = self.ptr[rows]
        per_row = self.ptr[rows + 1] - start
        total = int(per_row.sum())
        if total == 0:
            return _CountIndex(x, k, None)
        batch_row = torch.repeat_interleave(torch.arange(len(rows), device=rows.device), per_row)
        first = per_row.cumsum(0) - per_row              # where each row's run starts in the output
        pos = start[batch_row] + torch.arange(total, device=rows.device) - first[batch_row]
        return _CountIndex(x, k, (batch_row, self.cols[pos]))


class _NBTrainingNLL(torch.autograd.Function):
    """Per-cell −Σ_g log NB(x | L·softmax(h), θ) - Σ_g lgamma(x+1), with a hand-written backward.

    Same value as ``-nb_log_likelihood(x, softmax(h) * L, θ, log_softmax(h) + log L).sum(-1)`` without its
    parameter-free ``lgamma(x + 1)`` term (the caller adds that per-cell constant), but
    with about a third of the passes over the cells × genes batch that autograd's graph
    of the elementwise formula makes, and no lgamma / digamma per entry: these were the
    training step's largest non-matmul costs.
    """

    @staticmethod
    def forward(ctx, logits, log_theta, x, library, counts=None):
        return nb_forward(ctx, logits, log_theta, x, library, counts)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        grad_logits, e, g, const, theta = nb_backward(ctx, grad)
        grad_log_theta = None
        if e is not None:
            # summed over cells: Σ_c g_c (e_c + const), times dθ/dlog θ = θ
            grad_log_theta = (torch.mv(e.t(), g.squeeze(-1)) + g.sum() * const) * theta
        return grad_logits, grad_log_theta, None, None, None


def nb_forward(ctx, logits: torch.Tensor, log_theta: torch.Tensor, x: torch.Tensor,
               library: torch.Tensor, counts: _CountIndex | None = None) -> torch.Tensor:
    """The forward of :class:`_NBTrainingNLL` (shared with DP training's per-cell-θ form), saving what
    :func:`nb_backward` needs on ``ctx``. ``log_theta``: the genes' log θ (a vector); ``counts``:
    x's :class:`_CountIndex` if the caller has it from a :class:`CountCodes` (else built here)."""
    theta = log_theta.exp()
    theta_eps = theta + EPS
    counts = _CountIndex(x) if counts is None else counts
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
    ctx.counts = counts
    ctx.save_for_backward(p, mean, denom, log_denom, xt, theta, log_theta_eps)
    lib = library.squeeze(-1)
    return -(ll.sum(-1) + torch.special.xlogy(lib, lib) + (theta * log_theta_eps).sum())


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


def _mlp(sizes: list[int], dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        drop = Dropout(dropout)
        drop.width = b  # its input's width: arm_dropout draws the masks of all layers at once
        layers += [nn.Linear(a, b), nn.LayerNorm(b), nn.ReLU(), drop]
    return nn.Sequential(*layers)


@dataclass
class VAEConfig:
    """Architecture of the VAE; stored in every checkpoint."""

    n_genes: int
    hidden: list[int] = field(default_factory=lambda: [1024, 512, 128])
    latent: int = 32
    dropout: float = 0.1

    def to_dict(self) -> dict:
        return asdict(self)


class Terms(NamedTuple):
    """Per-cell outputs of :meth:`VAE.terms`, by name (a pytree, so ``torch.func`` can return it)."""

    mu: torch.Tensor  # posterior mean (cells x latent)
    logvar: torch.Tensor  # posterior log variance (cells x latent)
    nll: torch.Tensor  # NB reconstruction negative log-likelihood, summed over genes (cells)
    kl: torch.Tensor  # KL(q(z|x) || N(0, I)) (cells)
    mean: torch.Tensor | None  # NB mean (cells x genes)

    @property
    def elbo(self) -> torch.Tensor:
        """Per-cell ELBO = −(NLL + KL): higher is better explained."""
        return -(self.nll + self.kl)


class VAE(nn.Module):
    """Negative-binomial VAE (see module docstring)."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.cfg = cfg
        h = list(cfg.hidden)
        self.encoder = _mlp([cfg.n_genes, *h], cfg.dropout)
        self.mu = nn.Linear(h[-1], cfg.latent)
        self.logvar = nn.Linear(h[-1], cfg.latent)
        self.decoder = _mlp([cfg.latent, *reversed(h)], cfg.dropout)
        self.px = nn.Linear(h[0], cfg.n_genes)
        self.log_theta = nn.Parameter(torch.zeros(cfg.n_genes))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(μ, log σ²) of q(z | x) for raw counts x."""
        hid = self.encoder(torch.log1p(x))
        return self.mu(hid), self.logvar(hid).clamp(-15.0, 15.0)

    def decode(self, z: torch.Tensor, library: torch.Tensor) -> torch.Tensor:
        """NB mean: softmax over genes scaled by the observed library size."""
        return torch.softmax(self.px(self.decoder(z)), dim=-1) * library

    def decode_log(self, z: torch.Tensor, library: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """NB mean and its exact log (log-softmax + log library), no log per entry.

        A cell with no counts (library 0, removed by QC) gets a finite log mean; its
        counts are all 0, so the NB term's x · log(mean) is 0 either way.
        """
        log_p = torch.log_softmax(self.px(self.decoder(z)), dim=-1)
        return log_p.exp() * library, log_p + torch.log(library.clamp_min(EPS))

    def _arm_dropout(self, x: torch.Tensor) -> None:
        if self.training:
            arm_dropout((self.encoder, self.decoder), x.shape[0], x.device)

    def terms(self, x: torch.Tensor, sample: bool = True, fused: bool = False) -> Terms:
        """Per-cell μ, log σ², reconstruction NLL, KL and NB mean; z = μ when ``sample`` is False.

        ``fused``: the NLL through the training loss's fused NB term (same value to float
        rounding, with about a third of the passes and no lgamma per entry), and no NB mean
        (``mean`` is None). Not for ``torch.func`` transforms, which need the plain formula.
        """
        self._arm_dropout(x)
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp() if sample else mu
        library = x.sum(-1, keepdim=True)
        if fused:
            nll = _NBTrainingNLL.apply(self.px(self.decoder(z)), self.log_theta, x, library, None)
            return Terms(mu, logvar, nll + log_factorial_rows(x), kl_normal(mu, logvar), None)
        mean, log_mean = self.decode_log(z, library)
        nll = -nb_log_likelihood(x, mean, self.log_theta.exp(), log_mean).sum(-1)
        return Terms(mu, logvar, nll, kl_normal(mu, logvar), mean)

    def forward(self, x: torch.Tensor, sample: bool = False) -> Terms:
        """Same as :meth:`terms` (deterministic by default), for ``torch.func`` calls."""
        return self.terms(x, sample=sample)

    def loss(self, x: torch.Tensor, beta: float = 1.0, log_factorial: torch.Tensor | None = None,
             counts: _CountIndex | None = None) -> torch.Tensor:
        """Mean negative ELBO over the batch with KL weight ``beta`` (sampled z).

        The same value and gradients as ``(terms(x).nll + beta * terms(x).kl).mean()``
        (same random draws), through the fused NB term. ``log_factorial`` = the cells'
        :func:`log_factorial_rows` and ``counts`` = x's :class:`_CountIndex`
        (:meth:`CountCodes.index`), if the caller has them cached.
        """
        self._arm_dropout(x)
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        library = x.sum(-1, keepdim=True)
        nll = _NBTrainingNLL.apply(self.px(self.decoder(z)), self.log_theta, x, library, counts)
        if log_factorial is None:
            with torch.no_grad():
                log_factorial = log_factorial_rows(x)
        return (nll + log_factorial + beta * kl_normal(mu, logvar)).mean()


@dataclass
class ShardEnsembleConfig:
    """Architecture of a :class:`ShardEnsemble`: S shards of one VAE architecture; stored in its checkpoint.

    ``latent`` is the ensemble's latent width, S × the shard's (its μ / log σ² are the
    shards' concatenated), so code that sizes features by ``cfg.latent`` sees the right width.
    """

    shard: VAEConfig
    n_shards: int

    @property
    def n_genes(self) -> int:
        return self.shard.n_genes

    @property
    def latent(self) -> int:
        return self.n_shards * self.shard.latent

    def to_dict(self) -> dict:
        return {"shard": self.shard.to_dict(), "n_shards": int(self.n_shards)}


class ShardEnsemble(nn.Module):
    """S independently trained VAEs (shards) used as one model: SISA's constituent models
    (Bourtoule et al. 2021, "Machine Unlearning", IEEE S&P), aggregated as follows.

    Per cell, :meth:`terms` gives
      * ``nll`` and ``kl``: the mean over shards of each shard's NB NLL and KL, so the ELBO
        is the mean of the shards' ELBOs, a lower bound (by Jensen) on the log-likelihood of
        the uniform mixture (1/S) Σ_k p_k(x);
      * ``mean`` (NB mean, decoded): the mean of the shards' NB means;
      * ``mu`` / ``logvar``: the shards' concatenated (cells × S·latent). The shards' latent
        spaces are not aligned (each was trained from its own initialisation), so averaging
        μ would be meaningless; downstream code (attack features, kNN / latent utility) sees
        every shard's latent. ``kl`` is therefore *not* ``kl_normal(mu, logvar)`` (that is
        the sum over shards, S × the mean).

    It quacks like :class:`VAE` for everything downstream: ``cfg`` (``n_genes``, ``latent``),
    ``terms``, ``forward``, ``encode``, ``decode``, ``loss`` (the mean of the shards' losses),
    ``eval``/``train``, ``parameters``; :func:`cell_terms` and :func:`elbo` work unchanged.
    """

    def __init__(self, shards: list[VAE]):
        super().__init__()
        if not shards:
            raise ScunlearnError("a shard ensemble needs at least one shard (methods.<variant>.params.shards)")
        cfgs = {repr(s.cfg) for s in shards}
        if len(cfgs) != 1:
            raise ScunlearnError(f"shard ensemble: the shards have different architectures: {sorted(cfgs)}")
        self.shards = nn.ModuleList(shards)
        self.cfg = ShardEnsembleConfig(shards[0].cfg, len(shards))

    def __len__(self) -> int:
        return len(self.shards)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The shards' (μ, log σ²), concatenated along the latent axis (cells × S·latent)."""
        mus, logvars = zip(*(s.encode(x) for s in self.shards))
        return torch.cat(mus, -1), torch.cat(logvars, -1)

    def decode(self, z: torch.Tensor, library: torch.Tensor) -> torch.Tensor:
        """Mean of the shards' NB means, shard k decoding its own slice of the concatenated z."""
        parts = z.split(self.cfg.shard.latent, dim=-1)
        return torch.stack([s.decode(zk, library) for s, zk in zip(self.shards, parts)]).mean(0)

    def terms(self, x: torch.Tensor, sample: bool = True, fused: bool = False) -> Terms:
        """Per-cell terms aggregated over shards (see the class docstring); ``fused`` as :meth:`VAE.terms`."""
        ts = [s.terms(x, sample=sample, fused=fused) for s in self.shards]
        return Terms(torch.cat([t.mu for t in ts], -1), torch.cat([t.logvar for t in ts], -1),
                     torch.stack([t.nll for t in ts]).mean(0), torch.stack([t.kl for t in ts]).mean(0),
                     None if fused else torch.stack([t.mean for t in ts]).mean(0))

    def forward(self, x: torch.Tensor, sample: bool = False) -> Terms:
        return self.terms(x, sample=sample)

    def loss(self, x: torch.Tensor, beta: float = 1.0, log_factorial: torch.Tensor | None = None,
             counts: _CountIndex | None = None) -> torch.Tensor:
        """Mean over shards of each shard's :meth:`VAE.loss` (sampled z)."""
        return torch.stack([s.loss(x, beta, log_factorial, counts) for s in self.shards]).mean()


def set_training(module: nn.Module, mode: bool) -> None:
    """``module.train(mode)``, touching only the submodules whose mode differs.

    ``nn.Module.train`` re-sets every submodule through ``nn.Module.__setattr__``: ~0.2 ms for a
    VAE, paid several times per step by methods that switch dropout off for the attack features.
    """
    for m in module.modules():
        if m.training != mode:
            m.training = mode


def build_vae(cfg: dict | VAEConfig) -> VAE:
    return VAE(cfg if isinstance(cfg, VAEConfig) else VAEConfig(**cfg))


def resolve_device(spec: str = "auto") -> torch.device:
    """``auto`` = CUDA if available, else CPU; otherwise the named device, which must be present."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(spec)
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise ScunlearnError(f"config device: '{spec}' asked for, but this machine has no usable CUDA GPU "
                                 f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'none'}); "
                                 "use device: auto (falls back to CPU) or device: cpu")
        if dev.index is not None and dev.index >= n:
            raise ScunlearnError(f"config device: '{spec}' asked for, but only {n} CUDA GPU(s) found "
                                 f"(cuda:0 to cuda:{n - 1})")
    elif dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ScunlearnError(f"config device: '{spec}' asked for, but MPS is not available on this machine; "
                             "use device: auto or device: cpu")
    return dev


def _deterministic_kernels() -> None:
    """``torch.use_deterministic_algorithms(True, warn_only=True)`` without importing the compiler,
    and without its NaN fill of every new tensor.

    The public call also imports ``torch._inductor`` (and ``torch._dynamo``: ~1 s of CPU in
    every job process) only to set the compiler's own flag; nothing here is compiled, so the
    kernels' flag is set directly, and the compiler's too if something imported it already.
    Deterministic mode also fills each uninitialized allocation (``torch.empty``, every
    kernel's output) with NaN, a debugging aid that makes a read of garbage visible: on CPU
    that is an extra pass over ~170 tensors per training step (3-5% of a step). No kernel we
    run reads memory it did not write, so the fill is switched off; the tests' same-seed,
    same-output checks would catch one that did.
    """
    import sys

    setter = getattr(torch._C, "_set_deterministic_algorithms", None)
    if setter is None:  # a torch without the private setter: the public call
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        setter(True, warn_only=True)
        inductor = sys.modules.get("torch._inductor.config")
        if inductor is not None:
            inductor.deterministic = True
    no_fill = getattr(torch._C, "_set_deterministic_fill_uninitialized_memory", None)
    if no_fill is not None:
        no_fill(False)


def seed_everything(seed: int, threads: int | None = None) -> None:
    """Seed torch's RNGs, make CPU kernels deterministic, set the thread count."""
    torch.manual_seed(seed)
    _deterministic_kernels()
    if threads:
        torch.set_num_threads(int(threads))


@torch.no_grad()
def cell_terms(model: VAE, X: torch.Tensor, idx, batch_size: int = 4096, keep_mean: bool = False) -> Terms:
    """Deterministic (eval mode, z = μ) per-cell terms for rows ``idx`` of X, batched.

    The NB mean (cells x genes) is returned only with ``keep_mean`` (else ``mean`` is None).
    """
    was_training = model.training
    model.eval()
    idx = torch.as_tensor(idx, dtype=torch.long, device=X.device)
    parts: list[Terms] = []
    for s in range(0, len(idx), batch_size):
        parts.append(model.terms(X[idx[s:s + batch_size]], sample=False, fused=not keep_mean))
    model.train(was_training)
    if not parts:
        raise ValueError("cell_terms: no cells given")
    fields = zip(*parts)  # each field's batches
    return Terms(*[None if f[0] is None else torch.cat(f) for f in fields])


def elbo(model: VAE, X: torch.Tensor, idx) -> float:
    """Mean per-cell ELBO (z = μ, β = 1) over rows ``idx``: the validation metric."""
    return float(cell_terms(model, X, idx).elbo.mean())
