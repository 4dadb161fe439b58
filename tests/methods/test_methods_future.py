"""The paper's future-work methods: relative Fisher scrubbing and latent projection (their defining maths)."""

import copy

import numpy as np
import pytest
import torch

from scunlearn.methods import get_method, resolve_params
from scunlearn.methods import latent_projection as lp_module
from scunlearn.methods.context import UnlearnContext
from scunlearn.methods.fisher import diagonal_fisher, preconditioner, retain_fisher
from scunlearn.methods.latent_projection import fit_direction, project_mu_head
from scunlearn.methods.relative_fisher import forget_fisher, relative_weights
from scunlearn.vae.model import cell_terms
from tests.methods.test_methods import _toy, _trained_toy

# ---- relative_fisher


def _linear_case():
    """w·x with w = (1, 1), loss ½ (w·x)²: per-sample gradient (w·x) x, hand-computable Fishers.

    Forget samples load on weight 1, retain samples on weight 0:
    forget x = (0.1, 1), (0, 2): gradients (0.11, 1.1), (0, 4)   → F_F = (0.00605, 8.605)
    retain x = (1, 0.1), (2, 0): gradients (1.1, 0.11), (4, 0)   → F_R = (8.605, 0.00605)
    """
    lin = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        lin.weight.fill_(1.0)
    xf = torch.tensor([[0.1, 1.0], [0.0, 2.0]])
    xr = torch.tensor([[1.0, 0.1], [2.0, 0.0]])

    def loss(call, x):
        return 0.5 * (call(x) ** 2).sum()

    return lin, xf, xr, loss


def test_relative_weights_hand_computed():
    lin, xf, xr, loss = _linear_case()
    F_f = diagonal_fisher(lin, loss, (xf,))["weight"].squeeze()
    F_r = diagonal_fisher(lin, loss, (xr,))["weight"].squeeze()
    torch.testing.assert_close(F_f, torch.tensor([0.00605, 8.605]))
    torch.testing.assert_close(F_r, torch.tensor([8.605, 0.00605]))
    w = relative_weights({"w": F_f}, {"w": F_r}, "share")["w"]
    torch.testing.assert_close(w, torch.tensor([0.00605 / 8.61105, 8.605 / 8.61105]))
    c = relative_weights({"w": F_f}, {"w": F_r}, "clipped_ratio")["w"]
    torch.testing.assert_close(c, torch.tensor([0.00605 / 8.605, 1.0]))
    # equal Fishers: share gives ½, clipped_ratio the full step; unused parameters get 0, never NaN
    z = torch.tensor([0.0, 2.0, 0.0, 3.0])
    fr = torch.tensor([0.0, 2.0, 5.0, 0.0])
    torch.testing.assert_close(relative_weights({"w": z}, {"w": fr}, "share")["w"], torch.tensor([0.0, 0.5, 0.0, 1.0]))
    torch.testing.assert_close(relative_weights({"w": z}, {"w": fr}, "clipped_ratio")["w"],
                               torch.tensor([0.0, 1.0, 0.0, 1.0]))


def test_relative_step_spares_the_retain_parameter_on_a_hand_built_case():
    lin, xf, xr, loss = _linear_case()
    F_f = diagonal_fisher(lin, loss, (xf,))
    F_r = diagonal_fisher(lin, loss, (xr,))
    P = preconditioner(F_r, damping=0.1)
    g = torch.autograd.grad(loss(lin, xf) / len(xf), [lin.weight])[0]  # forget-loss gradient (0.11, 4.55)
    plain = (1e-3 * P["weight"] * g).squeeze()
    for kind in ("share", "clipped_ratio"):
        rel = (1e-3 * relative_weights(F_f, F_r, kind)["weight"] * P["weight"] * g).squeeze()
        assert abs(rel[0]) < 1e-3 * abs(plain[0])  # the retain set's parameter: ~1000x less than fisher moves it
        assert float(rel[1]) == pytest.approx(float(plain[1]), rel=1e-3)  # the forget set's parameter: as much


def _one_step(name, model, X, part, **over):
    """One scrub step, no fine-tuning; α large enough that most parameters move well above float32 rounding."""
    params = resolve_params(name, {"alpha": 0.3, "steps": 1, "fisher_cells": 100, "finetune_epochs": 0, **over})
    ctx = UnlearnContext.build(copy.deepcopy(model), X, part, seed=0, params=params)
    return get_method(name).fn(ctx).state_dict(), ctx


@pytest.mark.parametrize("weighting", ["share", "clipped_ratio"])
def test_relative_fisher_moves_each_parameter_by_its_weight_times_fishers_step(weighting):
    model, X, part = _trained_toy()
    base = copy.deepcopy(model.state_dict())
    plain, _ = _one_step("fisher", model, X, part)
    rel, ctx = _one_step("relative_fisher", model, X, part, weighting=weighting)
    probe = copy.deepcopy(model).eval()
    W = relative_weights(forget_fisher(probe, ctx, ctx.params), retain_fisher(probe, ctx, ctx.params), weighting)
    n_low = n_high = 0
    for k, w in W.items():
        d_plain, d_rel = plain[k] - base[k], rel[k] - base[k]
        ulp = 4 * torch.finfo(torch.float32).eps * base[k].abs().clamp(min=1)  # float32 rounding of θ + step
        big = d_plain.abs() > 100 * ulp
        torch.testing.assert_close(d_rel, w * d_plain, rtol=1e-3, atol=float(ulp.max()))
        low, high = big & (w < 0.05), big & (w > 0.95)
        assert (d_rel[low].abs() < 0.06 * d_plain[low].abs()).all(), k  # retain-dominated: spared
        assert (d_rel[high].abs() > 0.94 * d_plain[high].abs()).all(), k  # forget-dominated: moved as by fisher
        n_low, n_high = n_low + int(low.sum()), n_high + int(high.sum())
    assert n_low > 100 and n_high > 10, (n_low, n_high)  # both kinds of parameter exist in the toy VAE


def test_relative_fisher_runs_logs_and_is_deterministic():
    model, X, part = _trained_toy()
    outs = []
    for _ in range(2):
        p = resolve_params("relative_fisher", {"steps": 5, "fisher_cells": 50, "finetune_epochs": 2,
                                               "batch_size": 32, "log_every": 2})
        ctx = UnlearnContext.build(copy.deepcopy(model), X, part, seed=2, params=p)
        outs.append(get_method("relative_fisher").fn(ctx).state_dict())
    traj = ctx.trajectory.frame()
    assert list(traj["phase"].iloc[[0, -1]]) == ["baseline", "final"]
    assert set(traj["phase"]) == {"baseline", "scrub", "finetune", "final"}
    assert traj["scrub_change"].dropna().iloc[-1] > 0  # the scrub raised the forget loss
    for k in outs[0]:
        assert torch.equal(outs[0][k], outs[1][k]), k


# ---- latent_projection


def test_fit_direction_mean_diff_and_regularised_lda():
    rng = np.random.default_rng(0)
    # the sets differ by (1, 1); dimension 1 is 10x noisier within each set than dimension 0
    mr = rng.normal(size=(4000, 2)) * [0.1, 1.0]
    mf = rng.normal(size=(4000, 2)) * [0.1, 1.0] + [1.0, 1.0]
    diff = mf.mean(0) - mr.mean(0)
    np.testing.assert_allclose(fit_direction(mf, mr, "mean_diff"), diff / np.linalg.norm(diff))
    np.testing.assert_allclose(fit_direction(mf, mr, "lda", shrinkage=1.0), diff / np.linalg.norm(diff))
    # unregularised LDA ∝ Σ⁻¹ Δ ≈ (1/0.01, 1/1): almost all along the quiet dimension 0
    d = fit_direction(mf, mr, "lda", shrinkage=0.0)
    np.testing.assert_allclose(d, np.array([100.0, 1.0]) / np.hypot(100.0, 1.0), atol=0.01)
    d_half = fit_direction(mf, mr, "lda", shrinkage=0.5)
    assert d[0] > d_half[0] > diff[0] / np.linalg.norm(diff)  # shrinkage moves LDA towards mean_diff
    assert np.linalg.norm(d_half) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="same mean"):
        fit_direction(mr, mr, "mean_diff")


def test_project_mu_head_zeroes_the_direction_for_any_input():
    model, X, _ = _toy()
    model.eval()
    d = torch.nn.functional.normalize(torch.randn(model.cfg.latent, dtype=torch.float64), dim=0)
    W0, b0 = model.mu.weight.detach().clone().double(), model.mu.bias.detach().clone().double()
    project_mu_head(model, d)
    proj = torch.eye(len(d), dtype=torch.float64) - torch.outer(d, d)
    torch.testing.assert_close(model.mu.weight.double(), proj @ W0)
    torch.testing.assert_close(model.mu.bias.double(), proj @ b0)
    x = torch.cat([X, torch.poisson(torch.rand(50, X.shape[1]) * 30)])  # data and random counts
    mu = model.encode(x)[0].double()
    assert mu.abs().max() > 0.1
    assert (mu @ d).abs().max() < 1e-5 * mu.abs().max()


def test_latent_projection_zeroes_d_freezes_the_encoder_and_refits_the_decoder(monkeypatch):
    model, X, part = _trained_toy()
    base = copy.deepcopy(model.state_dict())
    seen = {}
    real = lp_module.finetune

    def spy(m, ctx, **kw):
        seen["start"] = copy.deepcopy(m.state_dict())  # the projected weights fine-tuning starts from
        return real(m, ctx, **kw)

    monkeypatch.setattr(lp_module, "finetune", spy)
    p = resolve_params("latent_projection", {"epochs": 3, "batch_size": 32, "lr": 1e-3})
    ctx = UnlearnContext.build(copy.deepcopy(model), X, part, seed=0, params=p)
    out = get_method("latent_projection").fn(ctx)
    # the direction, recomputed from the baseline as the method does
    mu_f = cell_terms(model, ctx.forget, np.arange(len(ctx.forget))).mu.double().numpy()
    mu_r = cell_terms(model, ctx.retain, np.arange(len(ctx.retain))).mu.double().numpy()
    d = torch.as_tensor(fit_direction(mu_f, mu_r, "mean_diff"))
    x = torch.cat([X, torch.poisson(torch.rand(50, X.shape[1]) * 30)])  # every cell, audit cells too, and noise
    with torch.no_grad():
        mu = out.encode(x)[0].double()
        mu0 = model.encode(x)[0].double()
    assert (mu0 @ d).abs().max() > 0.5  # there was something to remove
    assert (mu @ d).abs().max() < 1e-5 * mu.abs().max()  # μ(x)·d = 0 for any input
    torch.testing.assert_close(mu, mu0 - torch.outer(mu0 @ d, d), atol=1e-5, rtol=1e-5)  # only that was removed
    after = out.state_dict()
    for k, v in after.items():
        if k.startswith(("encoder.", "logvar.")):
            assert torch.equal(v, base[k]), k  # encoder other than the μ head: bit-identical to the baseline
        if k.startswith(("encoder.", "logvar.", "mu.")):
            assert torch.equal(v, seen["start"][k]), k  # decoder-only fine-tuning left the encoder bit-identical
    assert not torch.equal(after["mu.weight"], base["mu.weight"])
    assert any(not torch.equal(after[k], seen["start"][k]) for k in after if k.startswith(("decoder.", "px.")))
    assert all(q.requires_grad for q in out.parameters())  # unfrozen again for whoever uses the model next
    traj = ctx.trajectory.frame()
    assert list(traj["phase"]) == ["baseline", "project", "finetune", "finetune", "finetune", "final"]
    assert traj["separation"].dropna().iloc[0] > 0.5
    # the forget cells lose what only their direction told the decoder: their loss rises
    assert traj["forget_loss"].iloc[1] > traj["forget_loss"].iloc[0]


def test_latent_projection_lda_is_deterministic():
    model, X, part = _trained_toy()
    outs = []
    for _ in range(2):
        p = resolve_params("latent_projection", {"direction": "lda", "epochs": 2, "batch_size": 32})
        ctx = UnlearnContext.build(copy.deepcopy(model), X, part, seed=5, params=p)
        outs.append(get_method("latent_projection").fn(ctx).state_dict())
    for k in outs[0]:
        assert torch.equal(outs[0][k], outs[1][k]), k


# ---- parameters


