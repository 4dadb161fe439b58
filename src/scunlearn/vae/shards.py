"""SISA's shard ensemble: S VAEs whose outputs are averaged; a model kind of its own in checkpoints."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from scunlearn import ScunlearnError
from scunlearn.vae.likelihood import CountIndex
from scunlearn.vae.model import VAE, Terms, VAEConfig


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
             counts: CountIndex | None = None) -> torch.Tensor:
        """Mean over shards of each shard's :meth:`VAE.loss` (sampled z)."""
        return torch.stack([s.loss(x, beta, log_factorial, counts) for s in self.shards]).mean()
