"""The scVI-like VAE with a real negative-binomial likelihood on raw counts.

Encoder: log1p(counts) → hidden layers → (μ, log σ²). Decoder: z → hidden layers
(reversed) → softmax over genes, times the cell's observed library size = NB mean;
per-gene inverse dispersion θ. Each hidden layer is Linear → LayerNorm → ReLU → Dropout.
Loss per cell: −log NB(x | z) + β · KL(q(z|x) ‖ N(0, I)).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import NamedTuple

import torch
from torch import nn

from scunlearn.vae.dropout import Dropout, arm_dropout
from scunlearn.vae.likelihood import EPS, NBNLL, CountIndex, kl_normal, log_factorial_rows, nb_log_likelihood


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
        self.encoder.counts_cells = True  # every pass enters here: what scunlearn.methods.compute counts
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
            nll = NBNLL.apply(self.px(self.decoder(z)), self.log_theta, x, library, None)
            return Terms(mu, logvar, nll + log_factorial_rows(x), kl_normal(mu, logvar), None)
        mean, log_mean = self.decode_log(z, library)
        nll = -nb_log_likelihood(x, mean, self.log_theta.exp(), log_mean).sum(-1)
        return Terms(mu, logvar, nll, kl_normal(mu, logvar), mean)

    def forward(self, x: torch.Tensor, sample: bool = False) -> Terms:
        """Same as :meth:`terms` (deterministic by default), for ``torch.func`` calls."""
        return self.terms(x, sample=sample)

    def loss(self, x: torch.Tensor, beta: float = 1.0, log_factorial: torch.Tensor | None = None,
             counts: CountIndex | None = None) -> torch.Tensor:
        """Mean negative ELBO over the batch with KL weight ``beta`` (sampled z).

        The same value and gradients as ``(terms(x).nll + beta * terms(x).kl).mean()``
        (same random draws), through the fused NB term. ``log_factorial`` = the cells'
        :func:`log_factorial_rows` and ``counts`` = x's :class:`CountIndex`
        (:meth:`CountCodes.index`), if the caller has them cached.
        """
        self._arm_dropout(x)
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        library = x.sum(-1, keepdim=True)
        nll = NBNLL.apply(self.px(self.decoder(z)), self.log_theta, x, library, counts)
        if log_factorial is None:
            with torch.no_grad():
                log_factorial = log_factorial_rows(x)
        return (nll + log_factorial + beta * kl_normal(mu, logvar)).mean()






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
