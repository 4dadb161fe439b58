"""dp_retrain (DP-SGD with Opacus): exact per-sample gradients, clipping, the accountant's ε, determinism,
and that the forget cells are training data. Tiny model, a few epochs: seconds."""

import copy
import math

import numpy as np
import pandas as pd
import pytest
import torch

pytest.importorskip("opacus")

from scunlearn import ScunlearnError  # noqa: E402
from scunlearn.methods import get_method, resolve_params  # noqa: E402
from scunlearn.methods.common import per_gene_loss  # noqa: E402
from scunlearn.methods.context import UnlearnContext  # noqa: E402
from scunlearn.methods.dp_retrain import DPTraining, DPVAELoss, training_cells  # noqa: E402
from tests.methods.test_methods import _toy as methods_toy  # noqa: E402

FAST = {"epochs": 3, "batch_size": 32, "kl_warmup_epochs": 1, "patience": 2}


def _toy():
    return methods_toy(n=240, g=30, scale=300, hidden=(16, 8))


def _run(X, part, seed=0, **params):
    model = _toy()[0]
    ctx = UnlearnContext.build(model, X, part, seed=seed, params=resolve_params("dp_retrain", {**FAST, **params}))
    out = get_method("dp_retrain").fn(ctx)
    return out, ctx


@pytest.fixture(scope="module")
def run():
    _, X, part = _toy()
    model, ctx = _run(X, part)
    return model, ctx, X, part


def _per_cell_grads(model, x, seed):
    """Each cell's gradient of its own loss, by plain autograd one cell at a time (same random draws)."""
    torch.manual_seed(seed)
    cell = DPVAELoss(model)(x)
    names = [n for n, _ in model.named_parameters()]
    out = {n: [] for n in names}
    for i in range(len(x)):
        gs = torch.autograd.grad(cell[i], list(model.parameters()), retain_graph=True)
        for n, g in zip(names, gs):
            out[n].append(g)
    return {n: torch.stack(v) for n, v in out.items()}


def test_per_cell_loss_is_the_vae_loss_per_gene():
    model, X, _ = _toy()
    x = X[:20]
    torch.manual_seed(5)
    ref = per_gene_loss(model, x)
    ref_grads = torch.autograd.grad(ref, list(model.parameters()))
    torch.manual_seed(5)
    ours = DPVAELoss(model)(x).mean()
    grads = torch.autograd.grad(ours, list(model.parameters()))
    assert float(ours) == pytest.approx(float(ref), rel=1e-6)
    # the per-cell θ backward sums to the fused loss's per-gene θ gradient (and every other gradient agrees)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_every_parameter_gets_exact_per_sample_grads():
    model, X, _ = _toy()
    x = X[:12]
    manual = _per_cell_grads(copy.deepcopy(model), x, seed=7)
    dp = DPTraining(model, X, {**resolve_params("dp_retrain", FAST), "epsilon": None, "noise_multiplier": 1.0},
                    seed=0, delta=1e-5)
    model.train()
    torch.manual_seed(7)
    dp.loss(x).mean().backward()
    names = dict(model.named_parameters())
    assert {"log_theta", "encoder.1.weight", "encoder.1.bias"} <= set(names)  # LayerNorm and θ included
    for n, q in names.items():
        assert getattr(q, "grad_sample", None) is not None, f"{n} has no per-sample gradient"
        assert q.grad_sample.shape == (len(x), *q.shape), n
        # Opacus undoes the batch mean: each row is that cell's own gradient
        torch.testing.assert_close(q.grad_sample, manual[n], rtol=1e-4, atol=1e-6, msg=n)
    dp.close()
    assert not any(hasattr(q, "grad_sample") for q in model.parameters())


def test_noise_free_step_is_the_mean_of_manually_clipped_per_sample_grads():
    model, X, _ = _toy()
    C = 0.05  # far below the per-cell gradient norms: every cell is clipped
    idx = torch.arange(16)
    manual = _per_cell_grads(copy.deepcopy(model), X[idx], seed=11)
    norms = torch.sqrt(sum(g.flatten(1).pow(2).sum(1) for g in manual.values()))
    assert (norms > 10 * C).all()
    factor = (C / (norms + 1e-6)).clamp(max=1.0)
    p = {**resolve_params("dp_retrain", FAST), "epsilon": None, "noise_multiplier": 0.0, "max_grad_norm": C}
    dp = DPTraining(model, X, p, seed=0, delta=1e-5)
    model.train()
    torch.manual_seed(11)
    dp.step(idx, beta=1.0)
    expected_batch = dp.opt.expected_batch_size
    assert expected_batch == int(len(X) * dp.sample_rate)
    total = 0.0
    for n, q in model.named_parameters():
        want = torch.einsum("i,i...->...", factor, manual[n]) / expected_batch
        torch.testing.assert_close(q.grad, want, rtol=1e-4, atol=1e-7, msg=n)
        total += float(q.grad.pow(2).sum())
    # the clipped mean is at most C · batch / expected batch in norm
    assert math.sqrt(total) <= C * len(idx) / expected_batch + 1e-6
    dp.close()


def test_an_empty_poisson_batch_still_takes_a_noisy_counted_step():
    model, X, _ = _toy()
    dp = DPTraining(model, X, {**resolve_params("dp_retrain", FAST), "epsilon": None, "noise_multiplier": 1.0},
                    seed=0, delta=1e-5)
    before = copy.deepcopy(model.state_dict())
    dp.step(torch.zeros(0, dtype=torch.long), beta=1.0)
    assert dp.steps == 1
    assert not torch.equal(before["log_theta"], model.state_dict()["log_theta"])  # the noise moved it
    dp.close()


def test_reported_epsilon_is_the_rdp_accountants_for_the_run(run):
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

    _, ctx, _, part = run
    r = ctx.report
    n = len(part.retain) + len(part.forget)
    assert r["dp_n_train"] == n
    assert r["dp_delta"] == pytest.approx(1 / (10 * n))
    assert r["dp_sample_rate"] == pytest.approx(1 / math.ceil(n / FAST["batch_size"]))  # Opacus's q
    assert r["dp_steps"] == r["dp_epochs_run"] * math.ceil(n / FAST["batch_size"])
    orders = RDPAccountant.DEFAULT_ALPHAS
    rdp = compute_rdp(q=r["dp_sample_rate"], noise_multiplier=r["dp_noise_multiplier"], steps=r["dp_steps"],
                      orders=orders)
    eps, _ = get_privacy_spent(orders=orders, rdp=rdp, delta=r["dp_delta"])
    assert r["dp_epsilon"] == pytest.approx(eps, rel=1e-9)
    # σ was calibrated so that the planned epochs spend the target ε (Opacus's tolerance 0.01)
    assert r["dp_epochs_run"] == FAST["epochs"]
    assert r["dp_target_epsilon"] - 0.02 <= r["dp_epsilon"] <= r["dp_target_epsilon"]
    traj = ctx.trajectory.frame()
    assert traj["phase"].iloc[0] == "baseline" and traj["phase"].iloc[-1] == "final"
    assert traj["epsilon"].iloc[-1] == pytest.approx(r["dp_epsilon"])
    assert traj.loc[traj["phase"] == "train", "epsilon"].is_monotonic_increasing


def test_a_given_noise_multiplier_is_used_as_is():
    _, X, part = _toy()
    _, ctx = _run(X, part, epochs=1, epsilon=None, noise_multiplier=2.0, delta=1e-4)
    assert ctx.report["dp_noise_multiplier"] == 2.0 and ctx.report["dp_delta"] == 1e-4
    assert ctx.report["dp_target_epsilon"] is None and 0 < ctx.report["dp_epsilon"] < 8


def test_deterministic_for_a_seed(run):
    model, ctx, X, part = run
    again, ctx2 = _run(X, part)
    for k, v in model.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k
    assert ctx.report == ctx2.report
    other, _ = _run(X, part, seed=1)
    assert not torch.equal(model.state_dict()["px.weight"], other.state_dict()["px.weight"])


def test_forget_cells_are_training_data_and_audit_cells_are_not(run):
    model, ctx, X, part = run
    torch.testing.assert_close(training_cells(ctx), X[np.r_[part.retain, part.forget]])
    # doubling the forget cells' counts changes the model trained with the same seed ...
    X2 = X.clone()
    X2[part.forget] *= 2
    changed, _ = _run(X2, part)
    assert not torch.equal(model.state_dict()["encoder.0.weight"], changed.state_dict()["encoder.0.weight"])
    # ... changing audit cells does not: they never reach the method
    X3 = X.clone()
    X3[part.audit] *= 2
    same, _ = _run(X3, part)
    for k, v in model.state_dict().items():
        assert torch.equal(v, same.state_dict()[k]), k


def test_exactly_one_of_epsilon_and_noise_multiplier():
    _, X, part = _toy()
    with pytest.raises(ScunlearnError, match="exactly one of epsilon .* and noise_multiplier"):
        _run(X, part, noise_multiplier=1.0)
    with pytest.raises(ScunlearnError, match="methods.v.params.delta"):
        resolve_params("dp_retrain", {"delta": 1.5}, "v")


def test_report_shows_each_dp_variants_epsilon(tmp_path):
    from scunlearn.report import build_report
    from tests.report.test_report import CONFIG, PROVENANCE, make_summary

    summary = make_summary()
    dp = summary[summary["variant"] == "finetune"].copy()
    dp["method"], dp["variant"], dp["dp_delta"] = "dp_retrain", "dp_eps8", 3.4e-5
    dp["dp_epsilon"] = np.where(dp["seed"] == 0, 7.91, 7.97)  # seeds that stopped at different steps
    index = build_report(pd.concat([summary, dp], ignore_index=True), [], tmp_path / "report", CONFIG, PROVENANCE)
    comp = pd.read_csv(index.parent / "tables" / "method_comparison.tsv", sep="\t")
    row = comp[comp["variant"] == "dp_eps8"]
    assert len(row) == 2 and (row["dp_epsilon"] == 7.97).all() and (row["dp_delta"] == 3.4e-5).all()
    assert comp.loc[comp["variant"] != "dp_eps8", "dp_epsilon"].isna().all()
    note = index.read_text().split('id="dp_note"')[1].split("</p>")[0]
    assert "<b>dp_eps8</b>: ε = 7.97 at δ = 3.4e-05" in note and note.count("ε =") == 1


def test_the_unlearn_environments_hold_every_registered_methods_imports():
    """The unlearn rule imports a method's module by name (importlib), which the static closure of
    test_envs does not follow: opacus (dp_retrain) must be in both torch environments all the same."""
    from scunlearn import codedeps
    from scunlearn.methods import REGISTRY
    from tests.workflow.test_envs import CONDA_NAME, ROOT, _module_third_party, _names

    modules, _ = codedeps.closure({f"scunlearn.methods.{s.module}" for s in REGISTRY.values()})
    needed = set().union(*map(_module_third_party, modules))
    assert "opacus" in needed and "torch" in needed
    for env in ("torch.yaml", "torch-cuda.yaml"):
        missing = {CONDA_NAME.get(n, n) for n in needed} - _names(ROOT / "envs" / env)
        assert not missing, f"envs/{env} lacks {sorted(missing)}"


def test_the_audit_records_dp_facts_reach_the_summary():
    """stage_audit merges the checkpoint meta's ``report`` into the record; aggregate keeps ε and δ as columns."""
    from scunlearn.audit.summary import SUMMARY_COLUMNS, aggregate
    from tests.report.test_report import make_summary

    records = make_summary().drop(columns=["dp_epsilon", "dp_delta"]).to_dict("records")
    dp = dict(records[-1], method="dp_retrain", variant="dp", dp_epsilon=7.99, dp_delta=3.4e-5,
              dp_noise_multiplier=0.65, dp_steps=69)
    df = aggregate([*records, dp], 0.03)
    assert list(df.columns) == SUMMARY_COLUMNS  # σ and steps stay in the audit record only
    row = df[df["variant"] == "dp"].iloc[0]
    assert (row["dp_epsilon"], row["dp_delta"]) == (7.99, 3.4e-5)
    assert df.loc[df["variant"] != "dp", "dp_epsilon"].isna().all()
