"""The scVI-like VAE with a real negative-binomial likelihood on raw counts.

Encoder: log1p(counts) → hidden layers → (μ, log σ²). Decoder: z → hidden layers
(reversed) → softmax over genes, times the cell's observed library size = NB mean;
per-gene inverse dispersion θ. Each hidden layer is Linear → LayerNorm → ReLU → Dropout.
Loss per cell: −log NB(x | z) + β · KL(q(z|x) ‖ N(0, I)).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from . import ScunlearnError

EPS = 1e-8


def nb_log_likelihood(x: torch.Tensor, mean: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Elementwise log NB(x; mean, inverse dispersion theta) — scipy's nbinom(n=θ, p=θ/(θ+mean))."""
    log_theta_mu = torch.log(theta + mean + EPS)
    return (
        torch.lgamma(x + theta)
        - torch.lgamma(theta)
        - torch.lgamma(x + 1.0)
        + theta * (torch.log(theta + EPS) - log_theta_mu)
        + x * (torch.log(mean + EPS) - log_theta_mu)
    )


def kl_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) ‖ N(0, I)) per row, summed over latent dimensions."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(-1)


def _mlp(sizes: list[int], dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.LayerNorm(b), nn.ReLU(), nn.Dropout(dropout)]
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

    def terms(self, x: torch.Tensor, sample: bool = True) -> dict[str, torch.Tensor]:
        """Per-cell μ, log σ², reconstruction NLL and KL; z = μ when ``sample`` is False."""
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp() if sample else mu
        library = x.sum(-1, keepdim=True)
        mean = self.decode(z, library)
        nll = -nb_log_likelihood(x, mean, self.log_theta.exp()).sum(-1)
        return {"mu": mu, "logvar": logvar, "nll": nll, "kl": kl_normal(mu, logvar), "mean": mean}

    def forward(self, x: torch.Tensor, sample: bool = False) -> dict[str, torch.Tensor]:
        """Same as :meth:`terms` (deterministic by default), for ``torch.func`` calls."""
        return self.terms(x, sample=sample)

    def loss(self, x: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
        """Mean negative ELBO over the batch with KL weight ``beta`` (sampled z)."""
        t = self.terms(x, sample=True)
        return (t["nll"] + beta * t["kl"]).mean()


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


def seed_everything(seed: int, threads: int | None = None) -> None:
    """Seed torch's RNGs, make CPU kernels deterministic, set the thread count."""
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    if threads:
        torch.set_num_threads(int(threads))


@torch.no_grad()
def cell_terms(model: VAE, X: torch.Tensor, idx, batch_size: int = 4096,
               keep_mean: bool = False) -> dict[str, torch.Tensor]:
    """Deterministic (eval mode, z = μ) per-cell terms for rows ``idx`` of X, batched.

    The NB mean (cells x genes) is returned only with ``keep_mean``.
    """
    was_training = model.training
    model.eval()
    idx = torch.as_tensor(idx, dtype=torch.long, device=X.device)
    out: dict[str, list[torch.Tensor]] = {}
    for s in range(0, len(idx), batch_size):
        t = model.terms(X[idx[s:s + batch_size]], sample=False)
        if not keep_mean:
            t.pop("mean")
        for k, v in t.items():
            out.setdefault(k, []).append(v)
    model.train(was_training)
    if not out:
        raise ValueError("cell_terms: no cells given")
    return {k: torch.cat(v) for k, v in out.items()}


def elbo(model: VAE, X: torch.Tensor, idx) -> float:
    """Mean per-cell ELBO (z = μ, β = 1) over rows ``idx``: the validation metric."""
    t = cell_terms(model, X, idx)
    return float(-(t["nll"] + t["kl"]).mean())
