"""Unlearning methods: extragradient maths, Fisher maths, frozen critics, the context, the registry."""

import copy

import numpy as np
import pytest
import torch

from scunlearn import ScunlearnError
from scunlearn.data.splits import Partition
from scunlearn.methods import REGISTRY, get_method, resolve_params
from scunlearn.methods import fisher as fisher_module
from scunlearn.methods import frozen_critic as fc_module
from scunlearn.methods.context import UnlearnContext
from scunlearn.methods.fisher import diagonal_fisher, preconditioner, retain_fisher
from scunlearn.runtime import seed_everything
from scunlearn.vae.model import VAEConfig, build_vae
from scunlearn.vae.optim import ExtraGradient, simultaneous_step
from tests.conftest import fresh_python


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


@pytest.mark.parametrize("fused", [False, True])
def test_extragradient_step_equals_one_with_deep_copied_state(fused):
    """ExtraGradient's in-place snapshot / restore = the textbook version that deep-copies
    ``state_dict()`` and loads it back: the same parameters and state after several steps."""
    import copy

    def run(step):
        torch.manual_seed(0)
        a, b = torch.nn.Linear(5, 3), torch.nn.Linear(3, 1)
        oa = torch.optim.Adam(a.parameters(), lr=0.05, fused=fused or None)
        ob = torch.optim.Adam(b.parameters(), lr=0.02, fused=fused or None)
        x = torch.randn(16, 5)

        def grads():
            out = b(torch.tanh(a(x))).pow(2).mean()
            ga = torch.autograd.grad(out, list(a.parameters()) + list(b.parameters()))
            for q, g in zip(list(a.parameters()), ga[:2]):
                q.grad = g
            for q, g in zip(list(b.parameters()), ga[2:]):
                q.grad = -g  # b ascends

        for _ in range(4):
            step([oa, ob], grads)
        return [q.detach().clone() for q in (*a.parameters(), *b.parameters())], [oa.state_dict(), ob.state_dict()]

    def reference(opts, compute_grads):
        params = [q for o in opts for g in o.param_groups for q in g["params"]]
        saved = [q.detach().clone() for q in params]
        states = [copy.deepcopy(o.state_dict()) for o in opts]
        for o in opts:
            o.zero_grad(set_to_none=True)
        compute_grads()
        for o in opts:
            o.step()
        for o in opts:
            o.zero_grad(set_to_none=True)
        compute_grads()
        grads = [q.grad.detach().clone() for q in params]
        with torch.no_grad():
            for q, s in zip(params, saved):
                q.copy_(s)
        for o, st in zip(opts, states):
            o.load_state_dict(st)
        for q, g in zip(params, grads):
            q.grad = g
        for o in opts:
            o.step()

    got, ref = run(lambda opts, g: ExtraGradient(opts).step(g)), run(reference)
    for u, v in zip(got[0], ref[0]):
        assert torch.equal(u, v)
    for so, sr in zip(got[1], ref[1]):
        assert so["state"].keys() == sr["state"].keys()
        for k in sr["state"]:
            for name, v in sr["state"][k].items():
                assert torch.equal(so["state"][k][name], v), name
    assert float(got[1][0]["state"][0]["step"]) == 4  # four real steps, extrapolations undone


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


def _toy(n=160, g=40, seed=0, n_rare=None, scale=400, hidden=(32, 16)):
    """Two cell types; the forget cells are the whole rare type (``n_rare`` cells, default n/8).

    Train = the first 3/4 of the cells, validation the next 1/8, audit the last 1/8; a fresh
    VAE (seeded). Shared by the method test files.
    """
    n_rare = n // 8 if n_rare is None else n_rare
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.ones(g), size=2)
    lab = (np.arange(n) < n_rare).astype(int)
    X = torch.tensor(rng.poisson(p[lab] * scale), dtype=torch.float32)
    a, b = 3 * n // 4, 7 * n // 8
    part = Partition(train=np.arange(0, a), validation=np.arange(a, b), audit=np.arange(b, n),
                     forget=np.arange(0, n_rare), retain=np.arange(n_rare, a))
    seed_everything(0)
    model = build_vae(VAEConfig(n_genes=g, hidden=list(hidden), latent=4, dropout=0.1))
    return model, X, part


def test_context_holds_no_audit_cells():
    model, X, part = _toy()
    ctx = UnlearnContext.build(model, X, part, seed=0, params={})
    assert len(ctx.forget) + len(ctx.retain) + len(ctx.validation) == 140
    assert not any("audit" in name for name in UnlearnContext.__slots__)
    with pytest.raises((AttributeError, TypeError)):
        ctx.audit = X  # frozen, slotted: nothing can be attached
    leaky = Partition(part.train, np.r_[part.validation, 150], part.audit, part.forget, part.retain)
    with pytest.raises(ValueError, match="validation cells are audit cells"):
        UnlearnContext.build(model, X, leaky, seed=0, params={})
    # the tensors are copies: writing to them cannot touch the data matrix
    ctx.forget.zero_()
    assert X[part.forget].sum() > 0


def test_registry_and_parameter_errors():
    assert {"frozen_critic", "extragradient", "fisher", "fisher_noise", "retain_finetune"} <= set(REGISTRY)
    with pytest.raises(ScunlearnError, match="unknown unlearning method 'nope'"):
        get_method("nope")
    with pytest.raises(ScunlearnError, match="methods.v.params: unknown parameter 'lamda'"):
        resolve_params("extragradient", {"lamda": 3}, "v")
    p = resolve_params("extragradient", {"retain_weight": 5, "early_stop": {"patience": 2}}, "v")
    assert p["retain_weight"] == 5 and p["early_stop"]["patience"] == 2 and p["early_stop"]["target"] == 0.0


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
    assert list(ctx.trajectory.frame()["phase"]) == ["baseline", "train", "train", "final"]


def test_extragradient_and_fisher_run_and_log():
    model, X, part = _toy()
    params = resolve_params("extragradient", {
        "epochs": 3, "batch_size": 32, "n_attackers": 2, "attacker": {"hidden": [16, 16]},
        "shadow": FAST["shadow"], "early_stop": {"min_epochs": 3, "tolerance": 0.0}})
    ctx = UnlearnContext.build(copy.deepcopy(model), X, part, seed=0, params=params)
    get_method("extragradient").fn(ctx)
    traj = ctx.trajectory.frame()
    train = traj[traj["phase"] == "train"]
    assert list(train["epoch"]) == [1, 2, 3] and train["shadow_auc"].between(0, 1).all()

    params = resolve_params("fisher", {"steps": 5, "fisher_cells": 50, "finetune_epochs": 2, "batch_size": 32})
    before = copy.deepcopy(model.state_dict())
    ctx = UnlearnContext.build(model, X, part, seed=0, params=params)
    out = get_method("fisher").fn(ctx)
    traj = ctx.trajectory.frame()
    assert set(traj["phase"]) == {"baseline", "scrub", "finetune", "final"}
    assert any(not torch.equal(before[k], v) for k, v in out.state_dict().items())


# ---- parameter schemas (checked at Snakefile parse time through resolve_params)


@pytest.mark.parametrize("method, params, message", [
    ("fisher", {"steps": -3}, "methods.v.params.steps: -3 is less than the minimum of 0"),
    ("fisher", {"steps": "three"}, "methods.v.params.steps: 'three' is not of type 'integer'"),
    ("fisher", {"steps": 2.5}, "methods.v.params.steps: 2.5 is not of type 'integer'"),
    ("fisher", {"damping": 0}, "methods.v.params.damping: 0 is less than or equal to the minimum of 0"),
    ("fisher", {"finetune_epochs": True}, "methods.v.params.finetune_epochs: True is not of type 'integer'"),
    ("frozen_critic", {"critic": 5}, "methods.v.params.critic: expected a mapping"),
    ("frozen_critic", {"critic": {"hidden": [0]}}, "methods.v.params.critic.hidden.0: 0 is less than the minimum of 1"),
    ("frozen_critic", {"critic": {"dropout": 1.5}},
     "methods.v.params.critic.dropout: 1.5 is greater than the maximum of 1"),
    ("frozen_critic", {"critic": {"hdden": [4]}}, "methods.v.params.critic: unknown parameter 'hdden'"),
    ("extragradient", {"early_stop": {"signal": "auc"}}, "methods.v.params.early_stop.signal: 'auc' is not one of"),
    ("extragradient", {"attacker": {"hidden": "wide"}},
     "methods.v.params.attacker.hidden: 'wide' is not of type 'array'"),
    ("retain_finetune", {"lr": -1e-3}, "methods.v.params.lr: -0.001 is less than or equal to the minimum of 0"),
    ("relative_fisher", {"weighting": "ratio"}, "methods.v.params.weighting: 'ratio' is not one of"),
    ("relative_fisher", {"alpha": 0}, "methods.v.params.alpha: 0 is less than or equal to the minimum of 0"),
    ("relative_fisher", {"damping": -1}, "methods.v.params.damping: -1 is less than or equal to the minimum of 0"),
    ("latent_projection", {"direction": "pca"}, "methods.v.params.direction: 'pca' is not one of"),
    ("latent_projection", {"shrinkage": 1.5}, "methods.v.params.shrinkage: 1.5 is greater than the maximum of 1"),
    ("latent_projection", {"epochs": -1}, "methods.v.params.epochs: -1 is less than the minimum of 0"),
    ("latent_projection", {"finetune_epochs": 3}, "methods.v.params: unknown parameter 'finetune_epochs'"),
    ("neggrad_plus", {"beta": 1.5}, "methods.v.params.beta: 1.5 is greater than the maximum of 1"),
    ("neggrad_plus", {"max_rise": 0}, "methods.v.params.max_rise: 0 is less than or equal to the minimum of 0"),
    ("neggrad_plus", {"bta": 0.5}, "methods.v.params: unknown parameter 'bta'"),
    ("scrub", {"msteps": -1}, "methods.v.params.msteps: -1 is less than the minimum of 0"),
    ("scrub", {"alpha": "big"}, "methods.v.params.alpha: 'big' is not of type 'number'"),
    ("scrub", {"forget_batch_size": 0}, "methods.v.params.forget_batch_size: 0 is less than the minimum of 1"),
    ("ssd", {"lambda": 0}, "methods.v.params.lambda: 0 is less than or equal to the minimum of 0"),
    ("ssd", {"alpha": -10}, "methods.v.params.alpha: -10 is less than or equal to the minimum of 0"),
    ("ssd", {"data_cells": 2.5}, "methods.v.params.data_cells: 2.5 is not of type 'integer'"),
    ("salun", {"mask_fraction": 0}, "methods.v.params.mask_fraction: 0 is less than or equal to the minimum of 0"),
    ("salun", {"mask_fraction": 1.5}, "methods.v.params.mask_fraction: 1.5 is greater than the maximum of 1"),
    ("simnpo", {"beta": 0}, "methods.v.params.beta: 0 is less than or equal to the minimum of 0"),
    ("simnpo", {"reference": "retrain"}, "methods.v.params.reference: 'retrain' is not one of"),
    ("selective_amnesia", {"replay": "none"}, "methods.v.params.replay: 'none' is not one of"),
    ("selective_amnesia", {"ewc_lambda": -1}, "methods.v.params.ewc_lambda: -1 is less than the minimum of 0"),
    ("selective_amnesia", {"lr": 0}, "methods.v.params.lr: 0 is less than or equal to the minimum of 0"),
])
def test_parameter_schema_errors_name_variant_and_key(method, params, message):
    with pytest.raises(ScunlearnError) as e:
        resolve_params(method, params, "v")
    assert message in str(e.value)


def test_every_method_has_a_schema_matching_its_defaults():
    for name, m in REGISTRY.items():
        assert set(m.schema["properties"]) == set(m.defaults), name
        assert resolve_params(name, {}) == m.defaults  # the defaults validate against their own schema
    # an accepted override comes back merged, nested defaults kept
    p = resolve_params("frozen_critic", {"critic": {"epochs": 7}}, "v")
    assert p["critic"]["epochs"] == 7 and p["critic"]["hidden"] == [256, 256]


def test_registry_imports_without_torch_numpy_or_scanpy(root):
    # what the Snakefile needs at parse time must work in an env with only snakemake + jsonschema + pyyaml
    code = (
        "import sys\n"
        "for m in ('torch', 'numpy', 'scanpy', 'pandas', 'scipy', 'anndata'):\n"
        "    sys.modules[m] = None  # any import of these now raises ImportError\n"
        f"sys.path.insert(0, {str(root / 'src')!r})\n"
        "from scunlearn.methods import REGISTRY, resolve_params, get_method\n"
        "names = sorted(REGISTRY)\n"
        "for n in names:\n"
        "    resolve_params(n, {}, 'v')\n"
        "print(' '.join(names))\n"
    )
    assert set(fresh_python(code, timeout=60).split()) == set(REGISTRY)


# ---- each method's defining property, with numbers that could fail


_TRAINED: dict = {}


def _trained_toy(epochs=15, n_rare=20):
    """The toy VAE after a few epochs on its training cells: a Fisher that varies, a fitted model.

    Trained once per test session; each call gets its own copy of the model."""
    from scunlearn.vae.train import fit

    if (epochs, n_rare) not in _TRAINED:
        model, X, part = _toy(n_rare=n_rare)
        fit(model, X, part.train, part.validation, lr=3e-3, batch_size=32, max_epochs=epochs, kl_warmup_epochs=0,
            patience=epochs, seed=0)
        model.eval()
        _TRAINED[(epochs, n_rare)] = (model, X, part)
    model, X, part = _TRAINED[(epochs, n_rare)]
    return copy.deepcopy(model), X, part


def test_retain_finetune_reproduces_fishers_finetuning(monkeypatch):
    model, X, part = _trained_toy()
    seen = {}
    real = fisher_module.finetune

    def spy(m, ctx, **kw):
        seen["start"] = copy.deepcopy(m.state_dict())  # the scrubbed weights fine-tuning starts from
        seen["kw"] = kw
        return real(m, ctx, **kw)

    monkeypatch.setattr(fisher_module, "finetune", spy)
    fp = resolve_params("fisher", {"steps": 5, "fisher_cells": 50, "finetune_epochs": 3, "finetune_lr": 2e-3,
                                   "batch_size": 32, "patience": 2})
    ctx_f = UnlearnContext.build(copy.deepcopy(model), X, part, seed=3, params=fp)
    out_f = get_method("fisher").fn(ctx_f)

    start = copy.deepcopy(model)
    start.load_state_dict(seen["start"])
    rp = resolve_params("retain_finetune", {"epochs": 3, "lr": 2e-3, "batch_size": 32, "patience": 2})
    ctx_r = UnlearnContext.build(start, X, part, seed=3, params=rp)
    out_r = get_method("retain_finetune").fn(ctx_r)
    assert any(not torch.equal(seen["start"][k], v) for k, v in out_r.state_dict().items())  # it did move
    for k, v in out_f.state_dict().items():
        assert torch.allclose(v, out_r.state_dict()[k], atol=1e-6, rtol=0), k
    f_ft = ctx_f.trajectory.frame().query("phase == 'finetune'")["forget_loss"].to_numpy()
    r_ft = ctx_r.trajectory.frame().query("phase == 'finetune'")["forget_loss"].to_numpy()
    np.testing.assert_allclose(f_ft, r_ft, atol=1e-6)


def test_fisher_preconditioner_is_not_constant():
    model, X, part = _trained_toy()
    ctx = UnlearnContext.build(model, X, part, seed=0, params=resolve_params("fisher", {"fisher_cells": 100}))
    F = retain_fisher(model, ctx, ctx.params)
    flat_F = torch.cat([v.flatten() for v in F.values()])
    assert float(flat_F.max()) > 100 * float(flat_F.median())  # the Fisher varies over decades
    P = torch.cat([v.flatten() for v in preconditioner(F, ctx.params["damping"]).values()])
    # relative damping: unconstrained parameters get ~1/λ, the most constrained far less
    assert float(P.max()) == pytest.approx(1 / ctx.params["damping"], rel=0.05)
    assert float(P.max()) > 20 * float(P.min())
    assert float(P.std()) > 0.1 * float(P.mean())


def test_fisher_scrub_alone_moves_the_forget_loss_by_at_least_one_percent():
    model, X, part = _trained_toy()
    params = resolve_params("fisher", {"fisher_cells": 100, "finetune_epochs": 0})  # default alpha, damping, steps
    ctx = UnlearnContext.build(model, X, part, seed=0, params=params)
    get_method("fisher").fn(ctx)
    traj = ctx.trajectory.frame()
    assert list(traj["phase"].iloc[[0, -1]]) == ["baseline", "final"]
    scrub = traj[traj["phase"] == "scrub"]
    change = scrub["scrub_change"].dropna().iloc[-1]
    base = traj["forget_loss"].iloc[0]
    assert change >= 0.01  # the forget loss rose by ≥ 1% before any fine-tuning
    assert scrub["forget_loss"].iloc[-1] == pytest.approx(base * (1 + change))
    assert np.isfinite(traj["forget_loss"]).all()


def test_extragradient_attacker_term_keeps_acting_at_defaults():
    # defaults except epochs / batch size (a small model, a few epochs)
    model, X, part = _trained_toy()
    params = resolve_params("extragradient", {"epochs": 2, "batch_size": 32, "shadow_every": 0,
                                              "early_stop": {"min_epochs": 2, "tolerance": 0.0}})
    ctx = UnlearnContext.build(model, X, part, seed=0, params=params)
    get_method("extragradient").fn(ctx)
    train = ctx.trajectory.frame().query("phase == 'train'")
    assert len(train) == 2
    # floor: the attacker term has ≥ 10% of the VAE's gradient in every epoch (it had ~1% with
    # the retain loss summed over genes)
    assert (train["grad_share_attacker"] >= 0.10).all(), train["grad_share_attacker"].tolist()
    np.testing.assert_allclose(train["grad_share_attacker"] + train["grad_share_retain"], 1.0)


def test_every_trajectory_starts_with_the_baseline_forget_loss():
    model, X, part = _toy()
    runs = {
        "retain_finetune": {"epochs": 2, "batch_size": 32},
        "fisher_noise": {"fisher_cells": 50, "finetune_epochs": 1, "batch_size": 32},
        "frozen_critic": {"epochs": 1, "batch_size": 32, **FAST},
    }
    base = None
    for name, over in runs.items():
        ctx = UnlearnContext.build(copy.deepcopy(model), X, part, seed=0, params=resolve_params(name, over))
        get_method(name).fn(ctx)
        traj = ctx.trajectory.frame()
        assert traj["phase"].iloc[0] == "baseline" and traj["epoch"].iloc[0] == 0, name
        assert traj["phase"].iloc[-1] == "final", name
        assert {"forget_loss", "val_loss", "loss_gap"} <= set(traj.columns), name
        assert traj[["forget_loss", "val_loss"]].notna().all().all(), name
        base = traj["forget_loss"].iloc[0] if base is None else base
        assert traj["forget_loss"].iloc[0] == pytest.approx(base, abs=1e-7), name  # same baseline everywhere
        assert traj["forget_loss"].iloc[-1] != traj["forget_loss"].iloc[0], name  # and each method moved it


def test_methods_are_deterministic_for_a_seed():
    model, X, part = _toy()
    outs = []
    for _ in range(2):
        p = resolve_params("frozen_critic", {"epochs": 1, "batch_size": 32, "shadow_every": 0, **FAST})
        ctx = UnlearnContext.build(copy.deepcopy(model), X, part, seed=4, params=p)
        outs.append(get_method("frozen_critic").fn(ctx).state_dict())
    for k in outs[0]:
        assert torch.equal(outs[0][k], outs[1][k]), k


def test_unlearning_without_attackers_does_not_import_sklearn_or_scipy_stats():
    """scikit-learn and scipy.stats cost ~1.3 s of start-up per process: an unlearning job whose method never
    matches cells or scores an attack (fine-tuning here) runs without importing them."""
    code = (
        "import sys, numpy as np, torch\n"
        "import scunlearn.stages.unlearn\n"
        "from scunlearn.methods import get_method, resolve_params\n"
        "from scunlearn.methods.context import UnlearnContext\n"
        "from scunlearn.vae.model import VAE, VAEConfig\nfrom scunlearn.runtime import seed_everything\n"
        "from scunlearn.data.splits import Partition\n"
        "seed_everything(0, 1)\n"
        "X = torch.poisson(torch.rand(60, 30) * 5)\n"
        "part = Partition(train=np.arange(40), validation=np.arange(40, 50), forget=np.arange(5), "
        "retain=np.arange(5, 40), audit=np.arange(50, 60))\n"
        "ctx = UnlearnContext.build(VAE(VAEConfig(n_genes=30, hidden=[16, 8], latent=4)), X, part, seed=0,\n"
        "                           params=resolve_params('retain_finetune', {'epochs': 1}))\n"
        "get_method('retain_finetune').fn(ctx)\n"
        "print(sorted(m for m in ('sklearn', 'scipy.stats') if m in sys.modules))\n")
    assert fresh_python(code).strip() == "[]"


def test_cell_loss_fisher_equals_the_per_sample_gradients_of_torch_func():
    """The batched Fisher (layer rows, no torch.func) = diagonal_fisher's vmap(grad) per-cell gradients,
    for every parameter of a VAE with dropout (eval mode) and several hidden layers, over several chunks;
    a model it cannot split by rows (a shard ensemble) goes through diagonal_fisher itself."""
    from scunlearn.methods.fisher import _cell_loss, cell_loss_fisher
    from scunlearn.vae.model import VAEConfig, build_vae
    from scunlearn.vae.shards import ShardEnsemble

    torch.manual_seed(0)
    model = build_vae(VAEConfig(n_genes=30, hidden=[16, 8], latent=3, dropout=0.2)).eval()
    with torch.no_grad():
        model.log_theta.normal_(0, 0.5)
        for m in model.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.normal_(1, 0.3), m.bias.normal_(0, 0.3)
    x = torch.poisson(torch.rand(37, 30) * 6)
    ref = diagonal_fisher(model, _cell_loss, (x,), chunk_size=16)
    got = cell_loss_fisher(model, x, chunk_size=16)
    assert set(got) == set(ref) == {k for k, _ in model.named_parameters()}
    for k in ref:
        assert ref[k].abs().max() > 0, k
        torch.testing.assert_close(got[k], ref[k], rtol=1e-4, atol=1e-6 * float(ref[k].abs().max()))
    assert all(q.grad is None for q in model.parameters())  # no side effect on .grad
    ens = ShardEnsemble([build_vae(VAEConfig(n_genes=30, hidden=[8], latent=2)).eval() for _ in range(2)])
    ref = diagonal_fisher(ens, _cell_loss, (x[:8],))
    got = cell_loss_fisher(ens, x[:8])
    for k in ref:
        torch.testing.assert_close(got[k], ref[k])


def test_fisher_family_job_does_not_import_dynamo():
    """torch.func's first gradient imports torch._dynamo (~1.3 s): the Fisher methods' batched Fisher avoids it."""
    code = (
        "import sys, torch\n"
        "from scunlearn.methods.fisher import cell_loss_fisher\n"
        "from scunlearn.vae.model import VAEConfig, build_vae\n"
        "m = build_vae(VAEConfig(n_genes=20, hidden=[8], latent=2)).eval()\n"
        "F = cell_loss_fisher(m, torch.poisson(torch.rand(10, 20) * 3))\n"
        "print(float(F['px.weight'].sum()) > 0, 'torch._dynamo' in sys.modules)\n")
    assert fresh_python(code).split() == ["True", "False"]


def test_grad_norm_is_the_float64_euclidean_norm_and_shares_sum_to_one():
    """grad_norm (one fused op over the list) = √Σ g² accumulated in float64; None entries count as zero."""
    from scunlearn.methods.common import grad_norm, shares

    g = torch.Generator().manual_seed(0)
    grads = [torch.randn(40, 7, generator=g) * 1e3, None, torch.randn(5, generator=g) * 1e-3,
             torch.randn(1, 1, 3, generator=g)]
    ref = float(np.sqrt(sum(float((t.double() ** 2).sum()) for t in grads if t is not None)))
    assert grad_norm(grads) == pytest.approx(ref, rel=1e-12)
    assert grad_norm([None]) == 0.0 and grad_norm([]) == 0.0
    s = shares({"a": grad_norm(grads[:1]), "b": grad_norm(grads[2:])})
    assert sum(s.values()) == pytest.approx(1.0) and s["grad_share_a"] > 0.99


def test_extragradient_keeps_a_gradient_that_shares_its_parameters_memory():
    """The extrapolated gradient is kept as it is unless it aliases its parameter, which restoring the
    saved point overwrites: a compute_grads that hands back the parameter itself still steps right."""
    p = torch.nn.Parameter(torch.tensor([3.0, -1.0]))
    q = torch.nn.Parameter(torch.tensor([3.0, -1.0]))
    opt_p, opt_q = torch.optim.SGD([p], lr=0.1), torch.optim.SGD([q], lr=0.1)

    def alias():
        p.grad = p.data          # the gradient of |p|²/2, handed back as the parameter's own memory

    def copy_():
        q.grad = q.detach().clone()

    ExtraGradient([opt_p]).step(alias)
    ExtraGradient([opt_q]).step(copy_)
    # extrapolate to 0.9·θ, gradient there 0.9·θ, update θ − 0.1·0.9·θ = 0.91·θ
    assert torch.equal(p.detach(), q.detach())
    torch.testing.assert_close(q.detach(), torch.tensor([3.0, -1.0]) * 0.91)
