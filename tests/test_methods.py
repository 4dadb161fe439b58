"""Unlearning methods: extragradient maths, Fisher maths, frozen critics, the context, the registry."""

import copy

import numpy as np
import pytest
import torch

from scunlearn import ScunlearnError
from scunlearn.methods import REGISTRY, get_method, resolve_params
from scunlearn.methods import frozen_critic as fc_module
from scunlearn.methods.context import UnlearnContext
from scunlearn.methods.fisher import diagonal_fisher
from scunlearn.model import VAEConfig, build_vae, seed_everything
from scunlearn.optim import ExtraGradient, simultaneous_step
from scunlearn.splits import Partition


def _bilinear(step_fn, steps=1000, lr=0.1):
    """min_x max_y x·y from (1, 1): returns the distance to the equilibrium (0, 0)."""
    x = torch.nn.Parameter(torch.tensor(1.0))
    y = torch.nn.Parameter(torch.tensor(1.0))
    ox, oy = torch.optim.SGD([x], lr=lr), torch.optim.SGD([y], lr=lr)

    def grads():
        f = x * y
        gx, gy = torch.autograd.grad(f, [x, y])
        x.grad, y.grad = gx, -gy  # y ascends f = descends -f

    for _ in range(steps):
        step_fn([ox, oy], grads)
    return float(torch.sqrt(x.detach() ** 2 + y.detach() ** 2))


def test_extragradient_converges_where_gda_diverges():
    start = np.sqrt(2)
    gda = _bilinear(simultaneous_step)
    eg = _bilinear(lambda opts, g: ExtraGradient(opts).step(g))
    assert gda > 2 * start  # simultaneous descent-ascent spirals outwards
    assert eg < 0.1 * start  # extragradient spirals in to the equilibrium


def test_extragradient_restores_adam_state_before_update():
    # with Adam the update must start from the saved point's state: one step from zero state
    p = torch.nn.Parameter(torch.tensor([3.0]))
    opt = torch.optim.Adam([p], lr=0.1)

    def grads():
        p.grad = 2 * p.detach()  # gradient of p²

    ExtraGradient([opt]).step(grads)
    assert opt.state[p]["step"].item() == 1  # one real step, the extrapolation was undone
    # Adam's first step moves by lr·sign(g) whatever g is: from 3.0 to 2.9
    assert p.item() == pytest.approx(2.9, abs=1e-6)


def test_diagonal_fisher_hand_computed():
    lin = torch.nn.Linear(1, 1)
    with torch.no_grad():
        lin.weight.fill_(2.0)
        lin.bias.fill_(0.5)
    x = torch.tensor([[1.0], [2.0], [-1.0]])
    y = torch.tensor([[1.0], [3.0], [0.0]])

    def loss(call, xi, yi):
        return 0.5 * ((call(xi) - yi) ** 2).sum()

    F = diagonal_fisher(lin, loss, (x, y), chunk_size=2)
    r = (2.0 * x + 0.5 - y).squeeze()  # residuals: 1.5, 2.5, -1.5
    assert F["weight"].item() == pytest.approx(float((r ** 2 * x.squeeze() ** 2).mean()))  # (2.25+25+2.25)/3
    assert F["bias"].item() == pytest.approx(float((r ** 2).mean()))  # (2.25+6.25+2.25)/3


def _toy(n=160, g=40, seed=0):
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.ones(g), size=2)
    lab = (np.arange(n) < 20).astype(int)
    X = torch.tensor(rng.poisson(p[lab] * 400), dtype=torch.float32)
    part = Partition(train=np.arange(0, 120), validation=np.arange(120, 140), audit=np.arange(140, 160),
                     forget=np.arange(0, 20), retain=np.arange(20, 120))
    seed_everything(0)
    model = build_vae(VAEConfig(n_genes=g, hidden=[32, 16], latent=4, dropout=0.1))
    return model, X, part


def test_context_holds_no_audit_cells():
    model, X, part = _toy()
    ctx = UnlearnContext.build(model, X, part, seed=0, params={})
    assert len(ctx.forget) + len(ctx.retain) + len(ctx.validation) == 140
    assert not any("audit" in name for name in UnlearnContext.__slots__)
    with pytest.raises(Exception):
        ctx.audit = X  # frozen, slotted: nothing can be attached
    leaky = Partition(part.train, np.r_[part.validation, 150], part.audit, part.forget, part.retain)
    with pytest.raises(ValueError, match="validation cells are audit cells"):
        UnlearnContext.build(model, X, leaky, seed=0, params={})
    # the tensors are copies: writing to them cannot touch the data matrix
    ctx.forget.zero_()
    assert X[part.forget].sum() > 0


def test_registry_and_parameter_errors():
    assert {"frozen_critic", "extragradient", "fisher"} <= set(REGISTRY)
    with pytest.raises(ScunlearnError, match="unknown unlearning method 'nope'"):
        get_method("nope")
    with pytest.raises(ScunlearnError, match="methods.v.params: unknown parameter 'lamda'"):
        resolve_params("extragradient", {"lamda": 3}, "v")
    p = resolve_params("extragradient", {"retain_weight": 5, "early_stop": {"patience": 2}}, "v")
    assert p["retain_weight"] == 5 and p["early_stop"]["patience"] == 2 and p["early_stop"]["target"] == 0.5


FAST = {"critic": {"epochs": 20, "hidden": [16, 16]}, "shadow": {"epochs": 20, "hidden": [16, 16]}}


def test_frozen_critics_stay_bit_identical(monkeypatch):
    model, X, part = _toy()
    made = []
    real_fit = fc_module.fit_attacker

    def spy(*a, **k):
        c = real_fit(*a, **k)
        made.append((c, copy.deepcopy(c.state_dict())))
        return c

    monkeypatch.setattr(fc_module, "fit_attacker", spy)
    before = copy.deepcopy(model.state_dict())
    params = resolve_params("frozen_critic", {"n_critics": 2, "epochs": 2, "batch_size": 32, **FAST})
    ctx = UnlearnContext.build(model, X, part, seed=0, params=params)
    out = get_method("frozen_critic").fn(ctx)
    assert len(made) == 2
    for critic, state in made:
        for k, v in critic.state_dict().items():
            assert torch.equal(v, state[k]), k
    assert any(not torch.equal(before[k], v) for k, v in out.state_dict().items())  # the VAE moved
    assert len(ctx.trajectory.frame()) == 2


def test_extragradient_and_fisher_run_and_log():
    model, X, part = _toy()
    params = resolve_params("extragradient", {
        "epochs": 3, "batch_size": 32, "n_attackers": 2, "attacker": {"hidden": [16, 16]},
        "shadow": FAST["shadow"], "early_stop": {"min_epochs": 3, "tolerance": 0.0}})
    ctx = UnlearnContext.build(copy.deepcopy(model), X, part, seed=0, params=params)
    get_method("extragradient").fn(ctx)
    traj = ctx.trajectory.frame()
    assert list(traj["epoch"]) == [0, 1, 2] and traj["shadow_auc"].between(0, 1).all()

    params = resolve_params("fisher", {"steps": 5, "fisher_cells": 50, "finetune_epochs": 2, "batch_size": 32})
    before = copy.deepcopy(model.state_dict())
    ctx = UnlearnContext.build(model, X, part, seed=0, params=params)
    out = get_method("fisher").fn(ctx)
    traj = ctx.trajectory.frame()
    assert set(traj["phase"]) == {"scrub", "finetune"}
    assert any(not torch.equal(before[k], v) for k, v in out.state_dict().items())
