"""Literature methods adapted to the VAE: NegGrad+, SCRUB (Kurmanji et al. 2023), SSD (Foster et al. 2024).

Each test checks a method's defining property with numbers that could fail, on a tiny
model and tiny synthetic counts.
"""

import copy

import numpy as np
import pytest
import torch

from scunlearn.methods import get_method, resolve_params
from scunlearn.methods import scrub as scrub_module
from scunlearn.methods import ssd as ssd_module
from scunlearn.methods.common import per_gene_loss
from scunlearn.methods.context import UnlearnContext
from scunlearn.vae.train import adam
from tests.methods.test_methods import _toy, _trained_toy


def _run(name, params, model, X, part, seed=0):
    ctx = UnlearnContext.build(model, X, part, seed=seed, params=resolve_params(name, params, name))
    out = get_method(name).fn(ctx)
    return out, ctx


def _equal_states(a, b):
    return all(torch.equal(v, b[k]) for k, v in a.items())


# ---- NegGrad+


BUDGET = {"epochs": 4, "lr": 2e-3, "batch_size": 32, "patience": 2}


def test_neggrad_plus_without_ascent_is_retain_finetune_bit_for_bit():
    model, X, part = _trained_toy()
    out_n, ctx_n = _run("neggrad_plus", {"beta": 1.0, **BUDGET}, copy.deepcopy(model), X, part, seed=3)
    out_r, ctx_r = _run("retain_finetune", BUDGET, copy.deepcopy(model), X, part, seed=3)
    assert not _equal_states(out_r.state_dict(), model.state_dict())  # fine-tuning moved the model
    assert _equal_states(out_n.state_dict(), out_r.state_dict())  # and NegGrad+ at β = 1 is exactly it
    tn, tr = ctx_n.trajectory.frame(), ctx_r.trajectory.frame()
    np.testing.assert_array_equal(tn["forget_loss"], tr["forget_loss"])
    np.testing.assert_array_equal(tn["val_elbo"].dropna(), tr["val_elbo"].dropna())
    assert not tn["ascent"].dropna().any()


def test_neggrad_plus_ascent_raises_forget_loss_and_keeps_retain_stream():
    model, X, part = _trained_toy()
    budget = {**BUDGET, "patience": 10}
    _, ctx_r = _run("retain_finetune", budget, copy.deepcopy(model), X, part)
    _, ctx_n = _run("neggrad_plus", {"beta": 0.9, "max_rise": 10.0, **budget}, copy.deepcopy(model), X, part)
    tr = ctx_r.trajectory.frame().query("phase == 'finetune'")
    tn = ctx_n.trajectory.frame().query("phase == 'finetune'")
    assert tn["ascent"].all()
    # ascent on the forget cells raises their loss above what retain fine-tuning alone gives, every epoch
    assert (tn["forget_loss"].to_numpy() > tr["forget_loss"].to_numpy() + 0.005).all()
    assert np.isfinite(tn["forget_batch_loss"]).all()


def test_neggrad_plus_guard_stops_the_ascent():
    model, X, part = _trained_toy()
    _, ctx = _run("neggrad_plus", {"beta": 0.0, "max_rise": 0.02, **BUDGET, "patience": 10}, model, X, part)
    traj = ctx.trajectory.frame()
    base = traj["forget_loss"].iloc[0]
    train = traj.query("phase == 'finetune'")
    # pure ascent (β = 0) took steps (forget batches were drawn in epoch 1) and was stopped
    assert np.isfinite(train["forget_batch_loss"].iloc[0]) and not train["ascent"].iloc[-1]
    assert ctx.report["neggrad_ascent_stopped"]
    # without the guard, β = 0 ascends an unbounded NB loss: here it stops near +2% (one Adam step past it)
    assert train["forget_loss"].max() < base * 1.5
    assert np.isfinite(traj["forget_loss"]).all()


# ---- SCRUB


def test_scrub_min_loss_without_alpha_is_gamma_times_the_retain_loss():
    model, X, _ = _trained_toy()
    teacher = copy.deepcopy(model).eval()
    model.train()
    x = X[20:52]
    torch.manual_seed(5)
    loss, kl, _ = scrub_module.min_loss(teacher, model, x, alpha=0.0, gamma=0.7)
    g = torch.autograd.grad(loss, list(model.parameters()))
    torch.manual_seed(5)
    ref = 0.7 * per_gene_loss(model, x)
    g_ref = torch.autograd.grad(ref, list(model.parameters()))
    assert np.isnan(kl) and torch.equal(loss, ref)
    assert all(torch.equal(a, b) for a, b in zip(g, g_ref))


def test_scrub_without_max_steps_and_alpha_is_plain_retain_descent():
    model, X, part = _trained_toy()
    params = {"msteps": 0, "alpha": 0.0, "gamma": 1.0, "epochs": 2, "lr": 1e-3, "batch_size": 32}
    out, ctx = _run("scrub", params, copy.deepcopy(model), X, part, seed=2)
    # the same steps by hand: Adam on the per-gene retain loss, the same seeded batches and draws
    from scunlearn.methods.common import retain_batches

    ref = copy.deepcopy(model)
    with torch.random.fork_rng():
        torch.manual_seed(2)
        gen = torch.Generator().manual_seed(2)
        opt = adam(ref.parameters(), 1e-3)  # training's Adam (fused), as the methods use it
        for _ in range(2):
            ref.train()
            for b in retain_batches(len(ctx.retain), 32, gen, ctx.device):
                opt.zero_grad(set_to_none=True)
                per_gene_loss(ref, ctx.retain[b]).backward()
                opt.step()
    assert not _equal_states(out.state_dict(), model.state_dict())
    assert _equal_states(out.state_dict(), ref.state_dict())
    assert not ctx.trajectory.frame()["max_step"].dropna().any()


@pytest.mark.parametrize("decoder_weight", [0.0, 1.0])
def test_scrub_max_step_raises_forget_divergence_and_leaves_the_teacher(decoder_weight):
    model, X, part = _trained_toy()
    teacher = copy.deepcopy(model).eval().requires_grad_(False)
    t_state = copy.deepcopy(teacher.state_dict())
    xf = X[part.forget]
    assert scrub_module.mean_divergence(teacher, model, xf, decoder_weight) == 0.0  # student = teacher
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    torch.manual_seed(0)
    model.train()  # dropout makes the student differ from the teacher: a non-zero gradient
    for _ in range(3):
        opt.zero_grad(set_to_none=True)
        scrub_module.max_loss(teacher, model, xf, decoder_weight).backward()
        opt.step()
    after = scrub_module.mean_divergence(teacher, model, xf, decoder_weight)
    assert after > 1e-3
    assert _equal_states(teacher.state_dict(), t_state)
    assert all(not q.requires_grad for q in teacher.parameters())


def test_gaussian_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mu_t, lv_t, mu_s, lv_s = (torch.randn(5, 3, generator=g) for _ in range(4))
    D = torch.distributions
    ref = D.kl_divergence(D.Normal(mu_t, (0.5 * lv_t).exp()), D.Normal(mu_s, (0.5 * lv_s).exp())).sum(-1)
    torch.testing.assert_close(scrub_module.gaussian_kl(mu_t, lv_t, mu_s, lv_s), ref)


def test_scrub_runs_from_the_registry_and_moves_forget_cells_away():
    model, X, part = _trained_toy()
    teacher_state = copy.deepcopy(model.state_dict())
    params = {"msteps": 2, "epochs": 3, "lr": 1e-3, "batch_size": 32, "forget_batch_size": 8}
    out, ctx = _run("scrub", params, model, X, part)
    traj = ctx.trajectory.frame()
    assert list(traj["phase"]) == ["baseline", "train", "train", "train", "final"]
    train = traj.query("phase == 'train'")
    assert list(train["max_step"]) == [True, True, False]
    # the student's posterior moved further from the teacher's on forget cells than on retain cells
    assert (train["forget_kl"] > train["retain_kl"]).all()
    assert not _equal_states(out.state_dict(), teacher_state)


# ---- SSD


def _hand_importance(model, cells):
    """Mean over cells of squared per-cell gradients of the per-gene loss, one autograd call per cell."""
    model.eval()
    acc = {k: torch.zeros_like(v) for k, v in model.named_parameters()}
    for x in cells:
        t = model.terms(x.unsqueeze(0), sample=False)
        loss = ((t.nll + t.kl) / x.shape[-1]).sum()
        for (k, _), gr in zip(model.named_parameters(), torch.autograd.grad(loss, list(model.parameters()))):
            acc[k] += gr.pow(2)
    return {k: v / len(cells) for k, v in acc.items()}


def test_ssd_importances_match_a_hand_computation():
    model, X, part = _trained_toy(n_rare=6)  # forget 5% of D: α = 10 can select
    xf = X[part.forget]
    I_f = ssd_module.importances(model, xf, chunk_size=7)
    hand = _hand_importance(model, xf)
    for k in hand:
        torch.testing.assert_close(I_f[k], hand[k], rtol=1e-4, atol=1e-12)
    # I_D over all of retain ∪ forget, as the cell-weighted mean
    ctx = UnlearnContext.build(model, X, part, seed=0, params={})
    I_D = ssd_module.data_importances(model, ctx, I_f, data_cells=0, chunk_size=64)
    hand_D = _hand_importance(model, torch.cat([ctx.forget, ctx.retain]))
    for k in hand_D:
        torch.testing.assert_close(I_D[k], hand_D[k], rtol=1e-4, atol=1e-12)


@pytest.mark.parametrize("alpha, lam", [(10.0, 1.0), (2.0, 0.5)])
def test_ssd_dampens_exactly_the_selected_weights(monkeypatch, alpha, lam):
    model, X, part = _trained_toy(n_rare=6)  # forget 5% of D: α = 10 can select
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    seen = {}
    real = ssd_module.dampen

    def spy(m, I_f, I_D, a, lm):
        seen.update(I_f=I_f, I_D=I_D)
        return real(m, I_f, I_D, a, lm)

    monkeypatch.setattr(ssd_module, "dampen", spy)
    out, ctx = _run("ssd", {"alpha": alpha, "lambda": lam, "chunk_size": 64}, model, X, part)
    n_sel = n_all = 0
    for k, q in out.named_parameters():
        I_f, I_D = seen["I_f"][k], seen["I_D"][k]
        sel = I_f > alpha * I_D
        # unselected weights are bit-identical
        assert torch.equal(q.detach()[~sel], before[k][~sel]), k
        # selected ones are scaled by exactly min(λ I_D / I_f, 1), here computed in float64
        factor = torch.clamp(lam * I_D[sel].double() / I_f[sel].double(), max=1.0)
        torch.testing.assert_close(q.detach()[sel].double(), before[k][sel].double() * factor, rtol=1e-6, atol=0)
        n_sel += int(sel.sum())
        n_all += q.numel()
    assert 0 < n_sel < n_all  # the test has both kinds of weights
    frac = ctx.trajectory.frame()["dampened_fraction"].iloc[-1]
    assert frac == pytest.approx(n_sel / n_all) and ctx.report["ssd_dampened_fraction"] == frac
    # a hand check on a few entries: the largest forget/data importance ratio gets λ · I_D / I_f (< 1)
    k = "px.weight"
    ratio = torch.where(seen["I_D"][k] > 0, seen["I_f"][k] / seen["I_D"][k], 0.0)
    i = int(torch.argmax(ratio))
    f, d = float(seen["I_f"][k].flatten()[i]), float(seen["I_D"][k].flatten()[i])
    assert f > alpha * d
    assert float(dict(out.named_parameters())[k].detach().flatten()[i]) == pytest.approx(
        float(before[k].flatten()[i]) * min(lam * d / f, 1.0), rel=1e-6)


# ---- registry, parameters, determinism


@pytest.mark.parametrize("name, params, n_rare", [
    ("neggrad_plus", {"epochs": 2, "batch_size": 32}, 20),
    ("scrub", {"epochs": 2, "msteps": 1, "batch_size": 32}, 20),
    ("ssd", {"data_cells": 50, "chunk_size": 64}, 6),
])
def test_registry_runs_are_deterministic_and_log_baseline_and_final(name, params, n_rare):
    model, X, part = _toy(n_rare=n_rare)
    outs = []
    for _ in range(2):
        out, ctx = _run(name, params, copy.deepcopy(model), X, part, seed=4)
        outs.append(out.state_dict())
        traj = ctx.trajectory.frame()
        assert traj["phase"].iloc[0] == "baseline" and traj["epoch"].iloc[0] == 0
        assert traj["phase"].iloc[-1] == "final"
        assert traj[["forget_loss", "val_loss", "loss_gap"]].notna().all().all()
    assert _equal_states(outs[0], outs[1])
    assert not _equal_states(outs[0], model.state_dict())


@pytest.mark.parametrize("variant, params, message", [
    ("ng", {"method": "neggrad_plus", "params": {"beta": -0.1}}, "methods.ng.params.beta: -0.1 is less than"),
    ("sc", {"method": "scrub", "params": {"epochs": 0}}, "methods.sc.params.epochs: 0 is less than the minimum of 1"),
    ("sd", {"method": "ssd", "params": {"lamda": 1}}, "methods.sd.params: unknown parameter 'lamda'"),
    ("sl", {"method": "salun", "params": {"mask_fraction": 2}}, "methods.sl.params.mask_fraction: 2 is greater than"),
    ("np", {"method": "simnpo", "params": {"reference": "ref"}}, "methods.np.params.reference: 'ref' is not one of"),
    ("sa", {"method": "selective_amnesia", "params": {"ewc_lamda": 1}},
     "methods.sa.params: unknown parameter 'ewc_lamda'"),
])
def test_bad_variant_params_fail_when_the_snakefile_is_parsed(tmp_path, root, variant, params, message):
    import subprocess
    import sys

    import yaml

    cfg = yaml.safe_load((root / "tests/data/tiny.yaml").read_text())
    cfg["methods"][variant] = params
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    r = subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(root / "Snakefile"), "-n",
                        "--configfile", str(path), "--directory", str(tmp_path)],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert message in r.stdout + r.stderr
