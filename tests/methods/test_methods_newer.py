"""Newer methods adapted to the VAE: SalUn (Fan et al. 2024), SimNPO / NPO (Fan et al. 2024; Zhang et al.
2024), Selective Amnesia (Heng & Soh 2023).

Each test checks a defining property with numbers that could fail, on the tiny model and synthetic
counts of test_methods_literature.py (its ``_run`` helper, test_methods.py's ``_toy`` / ``_trained_toy``).
"""

import copy
import math

import pytest
import torch

from scunlearn.methods import salun as salun_module
from scunlearn.methods import selective_amnesia as sa_module
from scunlearn.methods.common import cell_loss_grad, pair_loss, per_gene_cell_loss
from scunlearn.methods.context import UnlearnContext
from scunlearn.methods.fisher import retain_fisher
from scunlearn.methods.simnpo import simnpo_loss
from tests.methods.test_methods import _toy, _trained_toy
from tests.methods.test_methods_literature import _equal_states, _run

BUDGET = {"epochs": 4, "lr": 2e-3, "batch_size": 32, "patience": 10}


# ---- shared pieces


def test_pair_loss_with_the_cell_as_its_own_target_is_the_training_loss():
    model, X, _ = _trained_toy()
    model.train()
    x = X[20:60]
    torch.manual_seed(7)
    a = pair_loss(model, x, x)
    torch.manual_seed(7)
    b = model.loss(x)
    torch.testing.assert_close(a, b, rtol=1e-6, atol=0)
    # another target changes the likelihood, not the posterior: a different, finite loss
    torch.manual_seed(7)
    c = pair_loss(model, x, X[60:100])
    assert torch.isfinite(c) and not torch.equal(a, c)


def test_cell_loss_grad_is_the_deterministic_per_gene_loss_and_keeps_the_mode():
    model, X, _ = _trained_toy()
    model.train()
    state = torch.random.get_rng_state()
    ell = cell_loss_grad(model, X[:30])
    assert model.training and torch.equal(state, torch.random.get_rng_state())  # nothing drawn
    torch.testing.assert_close(ell.detach(), per_gene_cell_loss(model, X[:30]), rtol=1e-5, atol=0)
    assert ell.requires_grad


# ---- SalUn


def test_top_fraction_mask_keeps_exactly_the_top_k_with_ties_by_position():
    scores = {"a": torch.tensor([[3.0, 1.0], [2.0, -2.0]]), "b": torch.tensor([2.0, 0.0, -3.0])}
    # |scores| in order: a = 3 1 2 2, b = 2 0 3. N = 7, k = round(3.5) = 4: the two 3s, then the first
    # two of the three 2s by position (a's two), not b[0]
    m = salun_module.top_fraction_mask(scores, 0.5)
    assert m["a"].tolist() == [[True, False], [True, True]]
    assert m["b"].tolist() == [False, False, True]
    assert sum(int(v.sum()) for v in salun_module.top_fraction_mask(scores, 1.0).values()) == 7
    one = salun_module.top_fraction_mask(scores, 0.01)  # never empty: at least one entry
    assert int(one["a"].sum()) == 1 and bool(one["a"][0, 0]) and not one["b"].any()
    # all equal: the first k by position
    flat = salun_module.top_fraction_mask({"x": torch.ones(10)}, 0.3)["x"]
    assert flat.tolist() == [True] * 3 + [False] * 7


@pytest.mark.parametrize("fraction", [0.5, 0.1])
def test_saliency_mask_is_the_top_fraction_of_the_forget_gradient(fraction):
    model, X, part = _trained_toy()
    model.train()
    xf = X[part.forget]
    g = salun_module.forget_gradient(model, xf, chunk_size=7)
    assert model.training  # the mode is restored
    # the gradient by hand: eval mode, z = μ, plain (unfused) NB formula, one autograd call
    model.eval()
    t = model.terms(xf, sample=False)
    hand = torch.autograd.grad(((t.nll + t.kl) / xf.shape[-1]).mean(), list(model.parameters()))
    for (k, _), h in zip(model.named_parameters(), hand):
        torch.testing.assert_close(g[k], h, rtol=1e-4, atol=1e-9)
    mask = salun_module.saliency_mask(model, xf, fraction)
    assert all(torch.equal(mask[k], v) for k, v in salun_module.saliency_mask(model, xf, fraction).items())
    n = sum(v.numel() for v in g.values())
    kept = torch.cat([g[k].abs().flatten()[mask[k].flatten()] for k in g])
    dropped = torch.cat([g[k].abs().flatten()[~mask[k].flatten()] for k in g])
    assert len(kept) == math.floor(fraction * n + 0.5)
    assert kept.min() >= dropped.max()


def test_salun_updates_only_the_salient_weights():
    model, X, part = _trained_toy()
    before = copy.deepcopy(model)
    mask = salun_module.saliency_mask(copy.deepcopy(model), X[part.forget], 0.3)
    out, ctx = _run("salun", {"mask_fraction": 0.3, **BUDGET}, model, X, part)
    moved = 0
    for (k, q), (_, q0) in zip(out.named_parameters(), before.named_parameters()):
        assert torch.equal(q.detach()[~mask[k]], q0.detach()[~mask[k]]), k  # bit-identical outside the mask
        moved += int((q.detach()[mask[k]] != q0.detach()[mask[k]]).sum())
    n_mask = sum(int(m.sum()) for m in mask.values())
    assert moved > 0.5 * n_mask  # and most salient entries did move
    assert ctx.report["salun_mask_fraction"] == pytest.approx(0.3, abs=1e-3)
    assert all(not q._backward_hooks for q in out.parameters())  # the hooks were removed


# ---- SimNPO / NPO


def test_simnpo_loss_and_gradient_on_a_hand_computed_case():
    ell = torch.tensor([1.0, 0.2, 3.0], dtype=torch.float64, requires_grad=True)
    beta, gamma = 2.0, 0.5
    loss = simnpo_loss(ell, beta, gamma)
    (g,) = torch.autograd.grad(loss.sum(), ell)
    loss = loss.detach()

    def sig(u):
        return 1.0 / (1.0 + math.exp(-u))

    for i, v in enumerate([1.0, 0.2, 3.0]):
        u = beta * v - gamma  # = −(β/|y|) log π − γ with log π = −ℓ·|y|
        assert float(loss[i]) == pytest.approx(-(2 / beta) * math.log(sig(u)), rel=1e-12)
        assert float(g[i]) == pytest.approx(-2 * sig(gamma - beta * v), rel=1e-12)
    # ℓ = 1, β = 2, γ = 0.5: L = log(1 + e^−1.5) = 0.20141, dL/dℓ = −2σ(−1.5) = −0.36485
    assert float(loss[0]) == pytest.approx(0.2014132779827524, rel=1e-12)
    assert float(g[0]) == pytest.approx(-0.3648510476127127, rel=1e-12)
    # NPO with the baseline as reference: (2/β) log 2 at the start, whatever the cell
    ref = torch.tensor([1.0, 0.2, 3.0], dtype=torch.float64)
    torch.testing.assert_close(simnpo_loss(ref.clone(), 2.5, 0.0, ref), torch.full((3,), 2 / 2.5 * math.log(2),
                                                                                 dtype=torch.float64))


@pytest.mark.parametrize("beta, gamma", [(2.5, 0.0), (0.1, 0.0), (1.0, 3.0)])
def test_simnpo_gradient_is_bounded_by_two_and_vanishes_as_the_forget_loss_grows(beta, gamma):
    ell = torch.linspace(-20, 400, 4001, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(simnpo_loss(ell, beta, gamma).sum(), ell)
    assert (g.abs() <= 2.0).all() and (g <= 0).all()  # raising ℓ lowers L: forgetting, never past GA's ×2
    assert (g.diff() >= 0).all()  # |dL/dℓ| falls monotonically as ℓ grows
    assert float(g[-1].abs()) < 1e-12  # and vanishes: the ascent saturates
    # weighted by λ in the method, the forget term's gradient per cell is ≤ 2 · n_genes × |∇θ ℓ|
    w = simnpo_loss(torch.tensor([1e6], dtype=torch.float64), beta, gamma)
    assert float(w) == pytest.approx(0.0, abs=1e-12)  # the loss itself → 0


def test_simnpo_term_through_the_model_is_the_weighted_sum_of_per_cell_gradients():
    model, X, part = _trained_toy()
    xf = X[part.forget][:8]
    params = list(model.parameters())
    beta, gamma = 0.5, 0.2
    ell = cell_loss_grad(model, xf)
    got = torch.autograd.grad(simnpo_loss(ell, beta, gamma).mean(), params)
    want = [torch.zeros_like(q) for q in params]
    for i in range(len(xf)):  # per cell by hand: dL/dℓ_i = −2σ(γ − βℓ_i), chain rule through ℓ_i
        li = cell_loss_grad(model, xf[i:i + 1])[0]
        w = -2 * torch.sigmoid(gamma - beta * li.detach()) / len(xf)
        for a, gi in zip(want, torch.autograd.grad(li, params)):
            a += w * gi
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-8)


def test_simnpo_fully_saturated_is_retain_finetune_bit_for_bit():
    # γ = −1e4: σ(γ − βℓ) = 0 in float, the forget term's gradient is exactly 0. Then SimNPO is the
    # control to the bit, which shows its forget term draws nothing from the control's random stream.
    model, X, part = _trained_toy()
    out_s, ctx_s = _run("simnpo", {"gamma": -1e4, **BUDGET}, copy.deepcopy(model), X, part, seed=3)
    out_r, _ = _run("retain_finetune", BUDGET, copy.deepcopy(model), X, part, seed=3)
    assert _equal_states(out_s.state_dict(), out_r.state_dict())
    assert (ctx_s.trajectory.frame()["npo_weight"].dropna() == 0).all()


def test_npo_reference_starts_at_log_two_and_its_weight_falls():
    model, X, part = _trained_toy()
    _, ctx = _run("simnpo", {"reference": "baseline", "beta": 2.5, **BUDGET}, model, X, part)
    tr = ctx.trajectory.frame().query("phase == 'finetune'")
    # the first epoch's mean starts at (2/β) log 2 = 0.5545 and can only have fallen from there
    assert tr["npo_loss"].iloc[0] < 2 / 2.5 * math.log(2)
    assert (tr["npo_weight"].diff().dropna() < 0).all()  # saturating as the forget loss rises
    assert (tr["forget_loss"].diff().dropna() > 0).all()


# ---- Selective Amnesia


def test_ewc_penalty_on_a_two_parameter_hand_case():
    lin = torch.nn.Linear(1, 1)
    with torch.no_grad():
        lin.weight.fill_(1.5)
        lin.bias.fill_(1.0)
    F = {"weight": torch.tensor([[2.0]]), "bias": torch.tensor([3.0])}
    anchor = {"weight": torch.tensor([[0.5]]), "bias": torch.tensor([-1.0])}
    pen = sa_module.ewc_penalty(lin, F, anchor, lam=0.5)
    assert float(pen.detach()) == pytest.approx(0.25 * (2 * 1.0**2 + 3 * 2.0**2))  # λ/2 Σ F Δθ² = 3.5
    gw, gb = torch.autograd.grad(pen, [lin.weight, lin.bias])
    assert float(gw) == pytest.approx(0.5 * 2 * 1.0) and float(gb) == pytest.approx(0.5 * 3 * 2.0)  # λ F Δθ


def test_selective_amnesia_fisher_and_ewc_match_explicit_per_cell_gradients():
    model, X, part = _trained_toy()
    ctx = UnlearnContext.build(model, X, part, seed=5, params={})
    p = {"fisher_cells": 12, "chunk_size": 5}
    F = retain_fisher(model, ctx, p)
    # the same 12 seeded retain cells, one autograd call per cell: F = mean of squared per-cell gradients
    # of the per-gene loss (eval mode, z = μ)
    rows = torch.randperm(len(ctx.retain), generator=torch.Generator().manual_seed(5))[:12]
    model.eval()
    hand = {k: torch.zeros_like(q) for k, q in model.named_parameters()}
    for x in ctx.retain[rows]:
        t = model.terms(x.unsqueeze(0), sample=False)
        g = torch.autograd.grad(((t.nll + t.kl) / x.shape[-1]).sum(), list(model.parameters()))
        for (k, _), gi in zip(model.named_parameters(), g):
            hand[k] += gi.pow(2) / 12
    for k in hand:
        torch.testing.assert_close(F[k], hand[k], rtol=1e-4, atol=1e-12)
    # the penalty at a perturbed θ, and its gradient λ F Δθ
    anchor = {k: q.detach().clone() for k, q in model.named_parameters()}
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for q in model.parameters():
            q.add_(0.01 * torch.randn(q.shape, generator=gen))
    lam = 3e4
    pen = sa_module.ewc_penalty(model, F, anchor, lam)
    want = sum(float((hand[k].double() * (q.detach().double() - anchor[k].double()) ** 2).sum())
               for k, q in model.named_parameters())
    assert float(pen.detach()) == pytest.approx(lam / 2 * want, rel=1e-4)
    grads = torch.autograd.grad(pen, list(model.parameters()))
    for (k, q), g in zip(model.named_parameters(), grads):
        torch.testing.assert_close(g, lam * hand[k] * (q.detach() - anchor[k]), rtol=1e-4, atol=1e-12)


def test_surrogate_targets_keep_each_forget_cells_library():
    _, X, part = _toy()
    xf, xr = X[part.forget], X[part.retain]
    for kind in ("retain_mean", "uniform"):
        t = sa_module.surrogate_targets(xf, xr, kind)
        torch.testing.assert_close(t.sum(-1), xf.sum(-1), rtol=1e-5, atol=0)
    t = sa_module.surrogate_targets(xf, xr, "retain_mean")
    profile = (xr / xr.sum(-1, keepdim=True)).mean(0)
    torch.testing.assert_close(t[3] / xf[3].sum(), profile, rtol=1e-5, atol=1e-8)  # every cell: one profile
    u = sa_module.surrogate_targets(xf, xr, "uniform")
    assert torch.allclose(u[0], u[0, :1].expand_as(u[0]))


def test_generated_replay_cells_are_seeded_counts_from_the_frozen_decoder():
    model, X, part = _trained_toy()
    libs = X[part.retain].sum(-1)

    def draw(seed, n=3000):
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            return sa_module.sample_cells(model, n, libs)

    a, b = draw(1), draw(1)
    assert torch.equal(a, b) and not torch.equal(a, draw(2))
    assert (a >= 0).all() and torch.equal(a, a.round())
    # their mean library is the retain cells' (NB sums have the library as their mean), and the NB draw
    # makes each gene's variance at least its mean (over-dispersion)
    assert float(a.sum(-1).mean()) == pytest.approx(float(libs.mean()), rel=0.02)
    assert (a.var(0) >= 0.9 * a.mean(0)).float().mean() > 0.9


def test_ewc_holds_the_model_near_the_baseline():
    model, X, part = _trained_toy()
    base = {k: q.detach().clone() for k, q in model.named_parameters()}
    dist = {}
    for lam in (0.0, 1e6):
        out, ctx = _run("selective_amnesia", {"ewc_lambda": lam, "fisher_cells": 100, **BUDGET},
                        copy.deepcopy(model), X, part)
        F = retain_fisher(model, ctx, {"fisher_cells": 100, "chunk_size": 128})
        dist[lam] = float(sa_module.ewc_penalty(out, F, base, 2.0).detach())  # Σ F Δθ²
    assert dist[1e6] < 0.3 * dist[0.0]


# ---- all three: determinism, trajectory, forgetting vs the control


NEWER = [
    ("salun", {}),
    ("simnpo", {"beta": 0.5}),
    ("simnpo", {"reference": "baseline"}),
    ("selective_amnesia", {"fisher_cells": 50, "ewc_lambda": 4000.0}),  # λ_paper 100 × 40 genes
]


@pytest.mark.parametrize("name, params", NEWER)
def test_newer_methods_are_deterministic_and_log_baseline_and_final(name, params):
    model, X, part = _toy()
    outs = []
    for _ in range(2):
        out, ctx = _run(name, {**params, "epochs": 2, "batch_size": 32}, copy.deepcopy(model), X, part, seed=4)
        outs.append(out.state_dict())
        traj = ctx.trajectory.frame()
        assert list(traj["phase"]) == ["baseline", "finetune", "finetune", "final"]
        assert traj["epoch"].iloc[0] == 0
        assert traj[["forget_loss", "val_loss", "loss_gap"]].notna().all().all()
    assert _equal_states(outs[0], outs[1])
    assert not _equal_states(outs[0], model.state_dict())


@pytest.mark.parametrize("name, params", NEWER)
def test_newer_methods_raise_the_forget_loss_and_keep_the_retain_loss_near_the_controls(name, params):
    model, X, part = _trained_toy()
    out_r, ctx_r = _run("retain_finetune", BUDGET, copy.deepcopy(model), X, part)
    out_m, ctx_m = _run(name, {**params, **BUDGET}, copy.deepcopy(model), X, part)
    tr = ctx_r.trajectory.frame().query("phase == 'finetune'")["forget_loss"].to_numpy()
    tm = ctx_m.trajectory.frame().query("phase == 'finetune'")["forget_loss"].to_numpy()
    # the forget cells' loss, epoch by epoch, above what retain fine-tuning alone gives them (the toy's
    # forget cells are a whole cell type, which the control forgets too)
    assert len(tm) == len(tr) == BUDGET["epochs"]
    assert (tm > tr + 0.02).all()

    def losses(m):
        return float(per_gene_cell_loss(m, ctx_r.forget).mean()), float(per_gene_cell_loss(m, ctx_r.retain).mean())

    f0, _ = losses(model)
    f_r, r_r = losses(out_r)
    f_m, r_m = losses(out_m)
    # the returned (best-validation) model: forget loss up from the baseline's, retain loss near the control's
    assert f_m > f0 + 0.1
    assert abs(r_m - r_r) < 0.015 * r_r


@pytest.mark.parametrize("name", ["salun", "simnpo", "selective_amnesia"])
def test_config_readme_names_every_parameter_of_the_newer_methods(root, name):
    from scunlearn.methods import REGISTRY

    row = next(r for r in (root / "config/README.md").read_text().splitlines() if r.startswith(f"| `{name}` |"))
    assert all(f"`{k}`" in row for k in REGISTRY[name].defaults), row
