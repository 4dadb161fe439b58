"""K seeds of one training recipe trained at once as one batched model (:func:`fit_ensemble`).

Member k is the VAE that seed k gives alone (``seed_everything(seed)``, ``build_vae``,
:func:`scunlearn.vae.train.fit`): the same initial weights, data order, dropout masks and
reparameterisation noise (drawn from its own generators, seeded as the solo run's global ones),
Adam and early stopping on its own validation ELBO. Its weights are stacked with the other
members' (K, out, in) and every layer runs as one batched matmul, so the K small matmuls of a
batch-128 step become one larger kernel (CPU) or one launch (GPU). A member differs from its
solo run by float rounding only (the batched kernels sum in another order).
"""

from __future__ import annotations

import logging
import time
from typing import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from scunlearn import ScunlearnError
from scunlearn.costs import Progress
from scunlearn.vae.dropout import dropout_mask
from scunlearn.vae.likelihood import (
    COUNT_TABLE,
    NBNLL,
    ExactCounts,
    MemberCounts,
    count_codes_cached,
    kl_normal,
    log_factorial_cached,
    log_factorial_rows,
    nb_forward,
)
from scunlearn.vae.model import VAE, VAEConfig, build_vae
from scunlearn.vae.train import adam, kl_weight

log = logging.getLogger(__name__)

LN_EPS = 1e-5  # nn.LayerNorm's default, which the VAE's layers use


# ---------------------------------------------------------------- the NB term, batched over members









# ---------------------------------------------------------------- the stacked model

class _Linear(torch.autograd.Function):
    """Member-wise ``h @ W.T + b`` (h (K, B, in), W (K, out, in), b (K, out)) with a backward whose
    products come out in W's layout: autograd's bmm backward computes the transposed weight gradient
    from transposed views (a slow CPU bmm path) and then copies it into W's layout (a strided copy
    as slow as the product): together ~5x the forward product at K = 4, batch 128, on CPU."""

    @staticmethod
    def forward(ctx, h, W, b):
        ctx.save_for_backward(h, W)
        return torch.baddbmm(b.unsqueeze(1), h, W.transpose(1, 2))

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        h, W = ctx.saved_tensors
        grad_h = torch.bmm(g, W) if ctx.needs_input_grad[0] else None
        grad_W = torch.bmm(g.transpose(1, 2), h) if ctx.needs_input_grad[1] else None
        grad_b = g.sum(1) if ctx.needs_input_grad[2] else None
        return grad_h, grad_W, grad_b


def _linear(P: dict, name: str, h: torch.Tensor) -> torch.Tensor:
    """Member-wise ``h @ W.T + b``: h (K, B, in) or a shared (B, in), W (K, out, in) -> (K, B, out)."""
    W, b = P[f"{name}.weight"], P[f"{name}.bias"]
    if h.dim() == 2:
        h = h.expand(W.shape[0], *h.shape)
    if torch.is_grad_enabled():
        return _Linear.apply(h, W, b)
    return torch.baddbmm(b.unsqueeze(1), h, W.transpose(1, 2))


class StackedVAE:
    """The parameters of K same-architecture VAEs stacked along a leading member axis, and their
    batched forward pass. ``P[name]`` is the (K, ...) stack of every member's ``name`` parameter."""

    def __init__(self, cfg: VAEConfig, states: Sequence[dict], device):
        self.cfg = cfg
        self.names = list(states[0])
        self.P = {n: torch.stack([s[n] for s in states]).to(device).requires_grad_() for n in self.names}
        self.n_layers = len(cfg.hidden)

    def __len__(self) -> int:
        return len(next(iter(self.P.values())))

    def params(self) -> list[torch.Tensor]:
        return [self.P[n] for n in self.names]

    def member_state(self, k: int) -> dict:
        """Member k's state dict (copies), loadable into ``build_vae(cfg)``."""
        return {n: self.P[n][k].detach().clone() for n in self.names}

    def widths(self) -> list[int]:
        """The widths of the dropout layers, in the order a forward pass runs them."""
        h = list(self.cfg.hidden)
        return [*h, *reversed(h)]

    def _mlp(self, prefix: str, h: torch.Tensor, masks: list | None) -> torch.Tensor:
        for i in range(self.n_layers):
            h = _linear(self.P, f"{prefix}.{4 * i}", h)
            h = F.layer_norm(h, h.shape[-1:], eps=LN_EPS)
            ln = f"{prefix}.{4 * i + 1}"
            h = torch.addcmul(self.P[f"{ln}.bias"].unsqueeze(1), h, self.P[f"{ln}.weight"].unsqueeze(1)).relu_()
            if masks is not None:
                h = h * masks.pop(0)
        return h

    def forward(self, x: torch.Tensor, masks: list | None = None, noise: torch.Tensor | None = None):
        """(μ, log σ², logits) per member; z = μ + noise · σ if ``noise`` (K, B, latent) else z = μ.
        ``masks``: each dropout layer's (K, B, width) mask in order, or None (eval: no dropout)."""
        hid = self._mlp("encoder", torch.log1p(x), masks)
        mu = _linear(self.P, "mu", hid)
        logvar = _linear(self.P, "logvar", hid).clamp(-15.0, 15.0)
        z = mu if noise is None else mu + noise * (0.5 * logvar).exp()
        return mu, logvar, _linear(self.P, "px", self._mlp("decoder", z, masks))

    def loss(self, x, beta: float, log_factorial, counts: MemberCounts, masks, noise) -> torch.Tensor:
        """Each member's :meth:`VAE.loss` of its own batch (K,): x (K, B, G), log_factorial (K, B)."""
        mu, logvar, logits = self.forward(x, masks, noise)
        library = x.sum(-1, keepdim=True)
        nll = NBNLL.apply(logits, self.P["log_theta"], x, library, counts)
        return (nll + log_factorial + beta * kl_normal(mu, logvar)).mean(-1)

    @torch.no_grad()
    def elbo(self, X: torch.Tensor, idx: np.ndarray, batch_size: int = 4096) -> torch.Tensor:
        """Each member's mean deterministic ELBO (z = μ, β = 1) over rows ``idx`` (K,): as
        :func:`scunlearn.vae.model.elbo`, whose chunks of 4096 rows are split K ways here (memory)."""
        idx = torch.as_tensor(idx, dtype=torch.long, device=X.device)
        K = len(self)
        step = max(1, batch_size // K)
        parts = []
        for s in range(0, len(idx), step):
            x = X[idx[s:s + step]]
            mu, logvar, logits = self.forward(x)
            xk = x.expand(K, *x.shape)
            k = x.to(torch.int64).clamp_(0, COUNT_TABLE - 1)
            mask = x != k
            odd = None
            if bool(mask.any()):
                r, c = mask.nonzero(as_tuple=True)
                odd = (torch.arange(K, device=x.device).repeat_interleave(len(r)), r.repeat(K), c.repeat(K))
            counts = MemberCounts(xk, k.expand(K, *k.shape), odd)
            nll = nb_forward(None, logits, self.P["log_theta"], xk, x.sum(-1, keepdim=True), counts)
            nll = nll + log_factorial_rows(x)
            parts.append(-(nll + kl_normal(mu, logvar)))
        if not parts:
            raise ValueError("elbo: no cells given")
        return torch.cat(parts, 1).mean(-1)

    def keep(self, members: list[int], opt):
        """Drop every member not in ``members`` (positions) from the stack; returns a new optimizer
        over the smaller stack with the kept members' Adam state (per element, so unchanged)."""
        sel = torch.as_tensor(members, dtype=torch.long, device=self.P[self.names[0]].device)
        old = self.P
        self.P = {n: old[n].detach().index_select(0, sel).requires_grad_() for n in self.names}
        new = adam(self.params(), opt.param_groups[0]["lr"])
        for n in self.names:
            st = opt.state.get(old[n])
            if st is not None:
                new.state[self.P[n]] = {k: v.index_select(0, sel) if torch.is_tensor(v) and v.shape == old[n].shape
                                        else (v.clone() if torch.is_tensor(v) else v) for k, v in st.items()}
        return new


# ---------------------------------------------------------------- initialisation and random streams

def init_member(cfg: VAEConfig, seed: int, device) -> tuple[dict, torch.Generator]:
    """(initial state dict, the generator of its dropout / noise draws) of the solo run of ``seed``:
    ``seed_everything(seed)`` then ``build_vae(cfg)`` on the CPU, then its draws from torch's global
    generator of ``device`` (CPU: the state after the init; CUDA & co: freshly seeded, as the init
    ran on the CPU). Leaves torch's global CPU generator as the solo run's would be after its init."""
    torch.manual_seed(int(seed))
    state = {n: t.detach().clone() for n, t in build_vae(cfg).state_dict().items()}
    device = torch.device(device)
    if device.type == "cpu":
        gen = torch.Generator()
        gen.set_state(torch.get_rng_state())
    else:
        gen = torch.Generator(device=device)
        gen.manual_seed(int(seed))
    return state, gen


def draw_masks(widths: list[int], p: float, n_rows: int, gens: list, device,
               buf: torch.Tensor | None = None) -> list[torch.Tensor] | None:
    """Every dropout layer's (K, n_rows, width) mask, member k's from ``gens[k]`` exactly as
    :func:`scunlearn.vae.dropout.arm_dropout` draws a solo model's (one block per member per step).
    ``buf``: a (K, n_rows · Σ widths) tensor to draw them into (the masks are views of it)."""
    if p <= 0.0:
        return None
    K = len(gens)
    total = n_rows * sum(widths)
    if buf is None:
        buf = torch.empty(K, total, device=device)
    if p >= 1.0:
        buf.zero_()
    else:
        for k, g in enumerate(gens):
            dropout_mask((total,), p, device, generator=g, out=buf[k])
    return mask_views(buf, widths, n_rows)


def mask_views(buf: torch.Tensor, widths: list[int], n_rows: int) -> list[torch.Tensor]:
    """Each dropout layer's (K, n_rows, width) mask as a view of the (K, n_rows · Σ widths) ``buf``."""
    masks, off = [], 0
    for w in widths:
        masks.append(buf[:, off:off + n_rows * w].view(buf.shape[0], n_rows, w))
        off += n_rows * w
    return masks


def draw_noise(n_rows: int, latent: int, gens: list, device, out: torch.Tensor | None = None) -> torch.Tensor:
    """The reparameterisation noise (K, n_rows, latent), member k's from ``gens[k]`` (as ``randn_like(μ)``);
    into ``out`` if given."""
    if out is None:
        out = torch.empty(len(gens), n_rows, latent, device=device)
    for k, g in enumerate(gens):
        torch.randn(n_rows, latent, generator=g, device=device, out=out[k])
    return out


# ---------------------------------------------------------------- training

STEP_MODES = ("auto", "eager", "static", "graph")
GRAPH_WARMUP_STEPS = 3  # eager steps on a side stream before capture (cuBLAS handles, Adam's state)


class StaticStep:
    """One training step of an :class:`Ensemble` on fixed-shape buffers (``batch_size`` rows per member).

    Each step copies its rows, log-factorials, dropout masks, noise and β into the buffers (outside
    any graph: the masks and noise come from the members' own generators, in the eager step's
    order), then runs forward, NB loss, backward and the fused Adam on them. With ``capture`` (CUDA
    only) that work is recorded once as a CUDA graph after :data:`GRAPH_WARMUP_STEPS` eager steps and
    replayed: one launch instead of ~300 operations (torch.profiler counts 337 in an eager
    step), each a launch, which bound a batch-128 step on a GPU.
    Without it the same ops run eagerly (the CPU test of this logic). The count terms are
    :class:`ExactCounts` (static shapes), so a member's numbers differ from the eager step's by
    float rounding only. A capture that fails falls back to eager steps, with a warning.
    """

    def __init__(self, ens: Ensemble, X: torch.Tensor, batch_size: int, capture: bool):
        K, G, dev = len(ens.active), X.shape[1], X.device
        self.ens, self.K, self.B, self.G = ens, K, int(batch_size), G
        self.widths, self.p = ens.model.widths(), float(ens.cfg.dropout)
        self.x = torch.zeros(K, self.B, G, device=dev)
        self.lf = torch.zeros(K, self.B, device=dev)
        self.noise = torch.zeros(K, self.B, ens.cfg.latent, device=dev)
        self.beta = torch.zeros((), device=dev)
        self.mask_buf = torch.ones(K, self.B * sum(self.widths), device=dev) if self.p > 0.0 else None
        # views of mask_buf, fixed like it: refilled in place each step
        self.masks = mask_views(self.mask_buf, self.widths, self.B) if self.mask_buf is not None else None
        self.capture = bool(capture) and dev.type == "cuda"
        self.graph: torch.cuda.CUDAGraph | None = None
        self.loss: torch.Tensor | None = None  # the graph's output (K,)
        self.steps = 0

    def fill(self, X: torch.Tensor, log_factorial: torch.Tensor, flat: torch.Tensor, beta: float, gens: list) -> None:
        """Copy one batch (``flat``: the K · B row ids, member-major) and its random draws into the buffers."""
        torch.index_select(X, 0, flat, out=self.x.view(self.K * self.B, self.G))
        torch.index_select(log_factorial, 0, flat, out=self.lf.view(-1))
        if self.mask_buf is not None:
            draw_masks(self.widths, self.p, self.B, gens, self.x.device, buf=self.mask_buf)
        draw_noise(self.B, self.ens.cfg.latent, gens, self.x.device, out=self.noise)
        self.beta.fill_(float(beta))

    def _forward_backward_step(self) -> torch.Tensor:
        loss = self.ens.model.loss(self.x, self.beta, self.lf, ExactCounts(self.x),
                                   None if self.masks is None else list(self.masks),  # the loss pops them
                                   self.noise)
        loss.sum().backward()
        self.ens.opt.step()
        return loss.detach()

    def run(self) -> torch.Tensor:
        """One step on the buffers' batch; the members' batch losses (K,)."""
        if self.graph is not None:
            self.graph.replay()
            return self.loss
        if self.capture and self.steps >= GRAPH_WARMUP_STEPS:
            try:
                self.ens.opt.zero_grad(set_to_none=True)  # the captured backward then writes, not adds
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    self.loss = self._forward_backward_step()
                self.graph = graph
            except RuntimeError as e:  # an op that cannot be captured: the same step eagerly
                log.warning("CUDA graph capture of the training step failed (%s); eager steps", e)
                self.capture, self.graph = False, None
            else:
                log.info("training step captured as a CUDA graph (%d members, batch %d)", self.K, self.B)
                graph.replay()  # capture records, it does not run: this batch's step
                return self.loss
        self.ens.opt.zero_grad(set_to_none=True)
        if self.capture:  # warm-up before capture runs on a side stream, as torch's docs prescribe
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                loss = self._forward_backward_step()
            torch.cuda.current_stream().wait_stream(side)
        else:
            loss = self._forward_backward_step()
        self.steps += 1
        return loss


class Ensemble:
    """K members (one per seed) of one recipe in training: the stacked model, its Adam, each member's
    random streams (``gens``: dropout and noise; ``orders``: data order) and which are still training.

    ``step``: how a full batch's step runs. ``eager`` (the CPU default): as written, count terms from
    lookup tables. ``graph``: a :class:`StaticStep` captured as a CUDA graph (the CUDA default of
    ``auto``). ``static``: the same static step without capture (exact count terms; tests its logic on
    CPU). The last, partial batch of an epoch always runs eagerly."""

    def __init__(self, cfg: VAEConfig, seeds: Sequence[int], device, lr: float, step: str = "auto",
                 starts: Sequence[tuple[dict, torch.Generator]] | None = None):
        """``starts``: each member's (state dict, generator of its dropout / noise draws) to start from
        (fine-tuning trained models); by default a fresh initialisation (:func:`init_member`)."""
        if step not in STEP_MODES:
            raise ScunlearnError(f"ensemble: step {step!r} is not one of {STEP_MODES}")
        self.cfg, self.seeds = cfg, [int(s) for s in seeds]
        if not self.seeds:
            raise ScunlearnError("ensemble: no seeds given")
        if len(set(self.seeds)) != len(self.seeds):
            raise ScunlearnError(f"ensemble: repeated seeds {self.seeds}")
        self.device = torch.device(device)
        inits = list(starts) if starts is not None else [init_member(cfg, s, self.device) for s in self.seeds]
        if len(inits) != len(self.seeds):
            raise ScunlearnError(f"ensemble: {len(inits)} starting states for {len(self.seeds)} seeds")
        self.model = StackedVAE(cfg, [st for st, _ in inits], self.device)
        self.gens = [g for _, g in inits]
        self.orders = [torch.Generator().manual_seed(s) for s in self.seeds]  # as run_epoch's
        self.opt = adam(self.model.params(), lr)
        self.active = list(range(len(self.seeds)))  # member ids still in the stack, in stack order
        if step == "auto":
            step = "graph" if self.device.type == "cuda" else "eager"
        if step == "graph" and self.device.type != "cuda":
            raise ScunlearnError(f"ensemble: CUDA graphs need a CUDA device, not {self.device}")
        self.step_mode = step
        self._static: StaticStep | None = None  # built at the first full batch; rebuilt when members leave

    def run_epoch(self, X: torch.Tensor, train_idx: torch.Tensor, batch_size: int, beta: float) -> list[float]:
        """:func:`scunlearn.vae.train.run_epoch` for every active member at once; their mean batch losses."""
        dev, model, act = X.device, self.model, self.active
        lf, codes = log_factorial_cached(X), count_codes_cached(X)
        widths, p, K = model.widths(), float(self.cfg.dropout), len(act)
        gens = [self.gens[i] for i in act]
        n = len(train_idx)
        perms = torch.stack([train_idx[torch.randperm(n, generator=self.orders[i]).to(dev)] for i in act])
        total = torch.zeros(K, dtype=torch.float64, device=dev)
        seen = 0
        static = self.step_mode in ("static", "graph")
        if static and (self._static is None or self._static.B != batch_size):
            self._static = StaticStep(self, X, batch_size, capture=self.step_mode == "graph")
        for s in range(0, n, batch_size):
            b = perms[:, s:s + batch_size]
            B = b.shape[1]
            if B < 2:  # as run_epoch: a 1-cell batch is skipped
                continue
            flat = b.reshape(-1)
            if static and B == batch_size:
                self._static.fill(X, lf, flat, beta, gens)
                total += self._static.run() * B
                seen += B
                continue
            x = X.index_select(0, flat)
            index = codes.index(flat, x)
            x = x.view(K, B, -1)
            masks = draw_masks(widths, p, B, gens, dev)
            noise = draw_noise(B, self.cfg.latent, gens, dev)
            loss = model.loss(x, beta, lf.index_select(0, flat).view(K, B), MemberCounts.of(x, index), masks, noise)
            self.opt.zero_grad(set_to_none=True)
            loss.sum().backward()
            self.opt.step()
            total += loss.detach() * B
            seen += B
        return (total / max(seen, 1)).tolist()

    def drop(self, positions: list[int]) -> None:
        """Take the members at these stack positions out of training (their weights are discarded)."""
        keep = [pos for pos in range(len(self.active)) if pos not in set(positions)]
        if keep and len(keep) < len(self.active):
            self.opt = self.model.keep(keep, self.opt)
            self._static = None  # new parameter tensors: new buffers, and a new capture
        self.active = [self.active[pos] for pos in keep]


def fit_ensemble(cfg: VAEConfig, seeds: Sequence[int], X: torch.Tensor, train_idx, val_idx, *, lr: float,
                 batch_size: int, max_epochs: int, kl_warmup_epochs: int, patience: int,
                 min_delta: float = 0.0, step: str = "auto") -> list[tuple[VAE, pd.DataFrame]]:
    """Train one VAE per seed on rows ``train_idx`` of X, all at once; [(model, history)] in seed order.

    Each (model, history) is what ``seed_everything(seed); m = build_vae(cfg).to(dev); fit(m, ...)``
    gives, up to float rounding: the best validation epoch's weights and the per-epoch history
    (same columns; ``seconds`` is the batched epoch's wall time over the members it trained).
    A member that early-stops leaves the stack; the others go on. ``step``: :class:`Ensemble`'s
    (``auto``: a CUDA graph of the step on CUDA, the eager step elsewhere).
    """
    dev = X.device
    train_idx = torch.as_tensor(np.asarray(train_idx), dtype=torch.long, device=dev)
    val_idx = np.asarray(val_idx)
    ens = Ensemble(cfg, seeds, dev, lr, step=step)
    seeds, K = ens.seeds, len(ens.seeds)
    best = [-np.inf] * K
    best_state: list[dict | None] = [None] * K
    bad = [0] * K
    rows: list[list[dict]] = [[] for _ in range(K)]
    progress = Progress(max_epochs, "epoch", upper_bound=True)
    for epoch in range(max_epochs):
        if not ens.active:
            break
        t0 = time.perf_counter()
        beta = kl_weight(epoch, kl_warmup_epochs)
        train_loss = ens.run_epoch(X, train_idx, batch_size, beta)
        val = ens.model.elbo(X, val_idx).tolist()
        secs = (time.perf_counter() - t0) / len(ens.active)
        stopped = []
        timing = progress.timing(epoch + 1)  # the epoch's members share one elapsed time and ETA
        for pos, i in enumerate(ens.active):
            if not np.isfinite(train_loss[pos]) or not np.isfinite(val[pos]):
                raise ScunlearnError(f"training diverged at epoch {epoch} for seed {seeds[i]} "
                                     f"(loss {train_loss[pos]}, val ELBO {val[pos]}); lower train.lr")
            improved = val[pos] > best[i] + min_delta
            if improved:
                best[i], best_state[i], bad[i] = val[pos], ens.model.member_state(pos), 0
            else:
                bad[i] += 1
            rows[i].append({"epoch": epoch, "train_loss": train_loss[pos], "val_elbo": val[pos],
                            "kl_weight": beta, "seconds": secs, "best": improved})
            log.info("seed %d %s  train_loss %.3f  val_elbo %.3f  kl_weight %.2f  %.2fs%s  %s", seeds[i],
                     progress.count(epoch + 1), train_loss[pos], val[pos], beta, secs, "  *" if improved else "",
                     timing)
            # no early stop while β is still warming up: the ELBO scale changes under it
            if bad[i] >= patience and epoch >= kl_warmup_epochs:
                log.info("seed %d: early stop after epoch %d of at most %d; best epoch %d (val_elbo %.3f)", seeds[i],
                         epoch + 1, max_epochs, int(np.argmax([r["val_elbo"] for r in rows[i]])) + 1, best[i])
                stopped.append(pos)
        ens.drop(stopped)
    final = {i: ens.model.member_state(pos) for pos, i in enumerate(ens.active)}
    out = []
    for i in range(K):
        m = build_vae(cfg).to(dev)
        m.load_state_dict(best_state[i] if best_state[i] is not None else final[i])
        out.append((m, pd.DataFrame(rows[i])))
    return out
