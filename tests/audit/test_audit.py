"""The judge: AUC maths, out-of-fold honesty, signal and null behaviour, verdicts."""

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from scunlearn.audit.attack import mia
from scunlearn.audit.verdict import add_verdicts, floor_stats, paper_verdict
from scunlearn.membership.attackers import fold_splits
from scunlearn.membership.metrics import auc_score, bootstrap_auc_ci, tpr_at_fpr
from tests.conftest import fresh_python

ATT = {"folds": 5, "repeats": 2, "bootstrap": 300,
       "attacker": {"hidden": [32, 32], "dropout": 0.3, "lr": 3e-3, "weight_decay": 1e-4, "epochs": 80}}


def test_auc_equals_sklearn_with_ties():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, size=300)
    s = np.round(rng.normal(size=300) + y * 0.5, 1)  # rounding makes ties
    assert auc_score(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_average_ranks_equal_scipy_rankdata():
    from scipy.stats import rankdata

    from scunlearn.membership.metrics import average_ranks

    rng = np.random.default_rng(1)
    for s in [np.round(rng.normal(size=200), 1), rng.normal(size=50), np.zeros(7), np.array([3.0]),
              np.array([2.0, -np.inf, 2.0, np.inf, 1.0])]:
        np.testing.assert_array_equal(average_ranks(s), rankdata(s))
    assert np.isnan(auc_score([0, 1, 1], [0.1, np.nan, 0.3]))


@pytest.mark.parametrize("grouped", [False, True])
def test_out_of_fold_never_scores_a_training_cell(grouped):
    """Every split's test cells are outside its training cells, and each cell is held out once per repeat."""
    n = 120
    y = (np.arange(n) % 4 == 0).astype(int)
    groups = np.arange(n) // 6 if grouped else None
    scored = np.zeros((3, n), dtype=int)
    for r, tr, te in fold_splits(y, 5, 3, 0, groups):
        assert not set(tr) & set(te) and len(tr) + len(te) == n
        scored[r, te] += 1
        if grouped:  # a group is never split between training and test
            assert not set(groups[tr]) & set(groups[te])
    assert (scored == 1).all()


def test_attack_finds_shifted_members():
    rng = np.random.default_rng(1)
    pos = rng.normal(0.0, 1.0, size=(30, 10)) + 1.2
    neg = rng.normal(0.0, 1.0, size=(180, 10))
    y = np.r_[np.ones(30), np.zeros(180)]
    r = mia(np.r_[pos, neg], y, ATT, seed=0)
    assert r["auc"] > 0.85 and r["auc_ci_low"] > 0.7
    assert r["tpr_at_5pct_fpr"] > 0.2


def test_attack_on_identical_distributions_ci_covers_half():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(210, 10))
    y = np.r_[np.ones(30), np.zeros(180)]
    r = mia(X, y, ATT, seed=0)
    assert r["auc_ci_low"] < 0.5 < r["auc_ci_high"]
    assert abs(r["auc"] - 0.5) < 0.15


def test_bootstrap_ci_and_tpr():
    y = np.r_[np.ones(50), np.zeros(200)]
    s = np.r_[np.linspace(1, 2, 50), np.linspace(0, 1.5, 200)]
    lo, hi = bootstrap_auc_ci(y, s, 500, seed=0)
    assert lo < auc_score(y, s) < hi
    # perfectly separated scores: TPR 1 at any FPR
    assert tpr_at_fpr(y, np.r_[np.ones(50), np.zeros(200)] + 0.0, 0.01) == 1.0
    # 1% of 200 negatives = 2 negatives may lie above the threshold
    s2 = np.r_[np.full(50, 5.0), np.r_[np.full(2, 9.0), np.full(1, 6.0), np.zeros(197)]]
    assert tpr_at_fpr(y, s2, 0.01) == 0.0 and tpr_at_fpr(y, s2, 0.014) == 0.0  # 3rd negative (6) beats 5
    assert tpr_at_fpr(y, s2, 0.015) == 1.0  # 3 of 200 negatives above: FPR 1.5%


def test_floor_band_and_paper_verdicts():
    df = pd.DataFrame({
        "forget_set": ["s"] * 6,
        "method": ["baseline", "retrain", "retrain", "m", "m", "m"],
        "variant": ["baseline", "retrain", "retrain", "m", "m", "m"],
        "seed": [0, 0, 1, 0, 1, 2],
        "auc": [0.80, 0.50, 0.54, 0.53, 0.70, 0.40],
        "auc_ci_low": [0.70, 0.40, 0.44, 0.43, 0.60, 0.30],
        "auc_ci_high": [0.90, 0.60, 0.64, 0.63, 0.80, 0.49],
        "test_vs_retrain": ["ABOVE", "UNDECIDED", "UNDECIDED", "EQUIVALENT", "ABOVE", "BELOW"],
        "pc_forget_score": [1.0, 0.0, 0.0, 0.5, 1.0, -1.0],
        "wall_s": [10.0, 10.0, 20.0, 5.0, 5.0, 5.0],
    })
    out = add_verdicts(df, 0.03)
    assert out["floor"].iloc[0] == pytest.approx(0.52)
    assert list(out["paper_verdict"]) == ["LEAK", "TARGET", "TARGET", "SUCCESS", "FAIL", "OVER-UNLEARN"]
    assert list(out["verdict"]) == ["LEAK", "TARGET", "TARGET", "SUCCESS", "FAIL", "OVER-UNLEARN"]
    assert list(out["ci_overlaps_floor_range"]) == [False, True, True, True, False, False]
    # cost against the retrain model of the same seed (or the mean retrain time)
    assert list(out["cost_vs_retrain"].round(3)) == [1.0, 1.0, 1.0, 0.5, 0.25, round(5 / 15, 3)]
    assert floor_stats([0.5, 0.54])["floor_max"] == 0.54
    assert paper_verdict(0.55, "m", 0.49, 0.55) == "SUCCESS"  # band edges are in band


def test_mlp_attack_on_noise_features_has_its_null_at_half():
    """Row-shuffled (pure noise) features, matched-design groups: the mean AUC over repeats is 0.5 ± 0.03."""
    cfg = {**ATT, "repeats": 3, "attacker": {**ATT["attacker"], "epochs": 40}}
    aucs = []
    for r in range(24):
        rng = np.random.default_rng(1000 + r)
        X = rng.normal(size=(210, 12))
        y = np.r_[np.ones(30), np.zeros(180)].astype(int)
        groups = np.r_[np.arange(30), rng.integers(0, 30, size=180)]
        aucs.append(mia(X, y, cfg, seed=r, groups=groups)["auc"])
    assert abs(np.mean(aucs) - 0.5) < 0.03


def test_batched_attackers_match_the_single_attacker_recipe():
    """The batched attackers learn a planted signal in each fold and score only their own folds."""
    from scunlearn.membership.attackers import fit_score_batched

    rng = np.random.default_rng(4)
    y = np.r_[np.ones(40), np.zeros(160)].astype(int)
    X = rng.normal(size=(200, 6)) + y[:, None] * 1.5
    masks = np.zeros((3, 200), dtype=bool)
    for b in range(3):
        masks[b, rng.permutation(200)[:150]] = True
    s = fit_score_batched(X, y, masks, ATT["attacker"], seed=0)
    assert s.shape == (3, 200)
    for b in range(3):
        assert auc_score(y[~masks[b]], s[b, ~masks[b]]) > 0.85
    # same seed, same scores (deterministic on CPU); device "cpu" named is the default
    assert np.array_equal(s, fit_score_batched(X, y, masks, ATT["attacker"], seed=0))
    assert np.array_equal(s, fit_score_batched(X, y, masks, ATT["attacker"], seed=0, device="cpu"))


def _planted(seed=4):
    rng = np.random.default_rng(seed)
    y = np.r_[np.ones(40), np.zeros(160)].astype(int)
    X = rng.normal(size=(200, 6)) + y[:, None] * 1.5
    masks = np.zeros((3, 200), dtype=bool)
    for b in range(3):
        masks[b, rng.permutation(200)[:150]] = True
    return X, y, masks


def test_attackers_leave_the_callers_random_state_alone():
    """The attackers seed their own draws inside a forked RNG: an unlearning method that logs a shadow
    AUC between its steps keeps its own stream of dropout and noise draws."""
    import torch

    from scunlearn.membership.attackers import fit_score_batched

    X, y, masks = _planted()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    fit_score_batched(X, y, masks, ATT["attacker"], seed=0, device="cpu")
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")
def test_attackers_train_on_cuda_as_on_the_cpu():
    """audit.device cuda: the same attackers (initial weights from the CPU generator), trained on the GPU
    (dropout drawn there): each fold's AUC as on the CPU within noise; the caller's CUDA RNG untouched."""
    import torch

    from scunlearn.membership.attackers import fit_score_batched

    X, y, masks = _planted()
    cpu = fit_score_batched(X, y, masks, ATT["attacker"], seed=0, device="cpu")
    torch.cuda.manual_seed(7)
    expected = torch.rand(3, device="cuda")
    torch.cuda.manual_seed(7)
    gpu = fit_score_batched(X, y, masks, ATT["attacker"], seed=0, device="cuda")
    assert torch.equal(torch.rand(3, device="cuda"), expected)
    assert gpu.shape == cpu.shape and np.isfinite(gpu).all()
    for b in range(3):
        a_cpu, a_gpu = (auc_score(y[~masks[b]], s[b, ~masks[b]]) for s in (cpu, gpu))
        assert a_gpu > 0.85 and abs(a_gpu - a_cpu) < 0.05, (b, a_cpu, a_gpu)
    # the same seed again: the same scores, up to the GPU's non-deterministic reductions
    assert np.allclose(gpu, fit_score_batched(X, y, masks, ATT["attacker"], seed=0, device="cuda"), atol=1e-4)


def _matched_null(seed=3):
    """Null data with the matched design: 30 neighbourhoods, each one member and six non-members."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, size=(30, 8))
    pos = centres + rng.normal(0, 0.3, size=(30, 8))
    neg = np.repeat(centres, 6, axis=0) + rng.normal(0, 0.3, size=(180, 8))
    X = np.r_[pos, neg]
    y = np.r_[np.ones(30), np.zeros(180)].astype(int)
    groups = np.r_[np.arange(30), np.repeat(np.arange(30), 6)]
    return X, y, groups


def test_grouped_folds_remove_the_matched_design_anti_learning_bias():
    X, y, groups = _matched_null()
    plain = mia(X, y, ATT, seed=0)
    grouped = mia(X, y, ATT, seed=0, groups=groups)
    # ungrouped, a held-out member's own neighbours train the attacker as "non-member": AUC << 0.5
    assert plain["auc_ci_high"] < 0.5
    assert grouped["auc_ci_low"] < 0.5 < grouped["auc_ci_high"] and grouped["grouped_folds"]


def test_grouped_folds_keep_groups_together():
    from scunlearn.membership.attackers import fold_splits

    _, y, groups = _matched_null()
    for _, tr, te in fold_splits(y, 5, 2, 0, groups):
        assert not set(groups[tr]) & set(groups[te])
        assert y[te].sum() > 0 and y[tr].sum() > 0


def test_relu_dropout_is_relu_then_dropout():
    """One mask: each entry is 0 or relu(h) / (1 - p), about 1 - p of the positive entries kept; gradient = mask."""
    import torch

    from scunlearn.membership.attackers import _relu_dropout

    torch.manual_seed(0)
    h = torch.randn(4, 500, 64, requires_grad=True)
    out = _relu_dropout(h, 0.3)
    pos = h.detach() > 0
    kept = out.detach() != 0
    assert not (kept & ~pos).any()  # nothing negative survives (relu)
    assert torch.allclose(out.detach()[kept], h.detach()[kept] / 0.7)
    assert abs(kept.sum().item() / pos.sum().item() - 0.7) < 0.01
    out.sum().backward()
    assert torch.allclose(h.grad, kept.float() / 0.7)
    assert torch.equal(_relu_dropout(h.detach(), 1.0), torch.zeros_like(h))


def test_seeding_and_mlp_attack_do_not_import_torch_dynamo():
    """torch.use_deterministic_algorithms and torch.optim's first step import torch._dynamo (~1 s of CPU per
    audit process); seed_everything and the attack avoid both, and the kernels are still deterministic, without
    deterministic mode's NaN fill of every new tensor (an extra pass per allocation)."""
    code = ("import sys, numpy as np, torch\n"
            "from scunlearn.runtime import seed_everything\n"
            "seed_everything(0, 1)\n"
            "assert torch.are_deterministic_algorithms_enabled()\n"
            "assert torch.is_deterministic_algorithms_warn_only_enabled()\n"
            "assert not torch.utils.deterministic.fill_uninitialized_memory, 'NaN fill of new tensors left on'\n"
            "from scunlearn.audit.attack import mia\n"
            "rng = np.random.default_rng(0)\n"
            "y = np.r_[np.ones(20), np.zeros(40)].astype(int)\n"
            "mia(rng.normal(size=(60, 5)), y, {'folds': 2, 'repeats': 1, 'bootstrap': 10, 'attacker': "
            "{'hidden': [4], 'dropout': 0.3, 'lr': 1e-3, 'weight_decay': 1e-4, 'epochs': 2}}, 0)\n"
            "assert 'torch._dynamo' not in sys.modules, 'torch._dynamo imported'\n")
    fresh_python(code)


def test_audit_stage_imports_no_sklearn_and_reads_the_matched_stage_fold_groups(tmp_path):
    """An audit job imports neither scikit-learn nor scipy.stats / scipy.optimize (~2 s of each job's
    start-up): the MLP attack's fold groups come from the matched stage, folds and the utility's
    regression are ours. Its record equals that of a job whose matched file has no groups, which
    clusters them itself."""
    import json

    from scunlearn.runtime import seed_everything
    from scunlearn.stages.audit import stage_audit
    from scunlearn.stages.train import stage_matched
    from scunlearn.vae.cellstats import write_cell_stats
    from scunlearn.vae.checkpoints import save_checkpoint
    from scunlearn.vae.model import VAEConfig, build_vae
    from scunlearn.vae.train import fit
    from tests.conftest import tiny_audit_job

    jobs = {}
    for name in ("precomputed", "clustered_here"):
        d = tmp_path / name
        d.mkdir()
        adata, part, X, inp, params = tiny_audit_job(d)
        if name == "precomputed":  # the matched stage itself, with the groups (2 x the MLP attack's 3 folds)
            stage_matched({k: inp[k] for k in ("adata", "split", "forget")}, {"matched": inp["matched"]},
                          {"k": 7, "min_matched": 30, "seed": 0, "fold_groups": 6}, 1)
        seed_everything(7, 1)
        m = build_vae(VAEConfig(n_genes=adata.n_vars, hidden=[16], latent=2))
        fit(m, X, part.train, part.validation, lr=3e-3, batch_size=64, max_epochs=1, kl_warmup_epochs=0,
            patience=1, seed=7)
        save_checkpoint(m, d / "m.pt", {"genes": list(map(str, adata.var_names))})
        write_cell_stats(m, X, adata.obs_names, d / "m.cells.npz")
        inp.update(models=[str(d / "m.pt")], cells=[str(d / "m.cells.npz")], benchmarks=[""])
        jobs[name] = (inp, {"audits": [str(d / "audit.json")]}, params)
    assert "fold_groups" in json.loads((tmp_path / "precomputed/matched.json").read_text())
    stage_audit(*jobs["clustered_here"], 1)
    code = (
        "import json, sys\n"
        "from scunlearn.stages.audit import stage_audit\n"
        f"inp, out, params = json.loads({json.dumps(json.dumps(jobs['precomputed']))})\n"
        "stage_audit(inp, out, params, 1)\n"
        "print(sorted(m for m in ('sklearn', 'scipy.stats', 'scipy.optimize') if m in sys.modules))\n")
    assert fresh_python(code).strip().splitlines()[-1] == "[]"
    a = json.loads((tmp_path / "precomputed/audit.json").read_text())
    b = json.loads((tmp_path / "clustered_here/audit.json").read_text())
    for key in ("pc_auc", "delta_vs_retrain", "auc", "auc_ci_low", "loss_attack_auc", "latent_acc", "recon_mse"):
        assert np.isfinite(a[key]) and a[key] == pytest.approx(b[key], rel=1e-9, abs=1e-12), key
