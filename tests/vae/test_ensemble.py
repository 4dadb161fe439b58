"""K seeds trained as one batched model (scunlearn.ensemble): each member is its seed's solo run."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

from scunlearn import ScunlearnError
from scunlearn.io import write_h5ad, write_json
from scunlearn.runtime import seed_everything
from scunlearn.vae.batched import Ensemble, StackedVAE, draw_masks, draw_noise, fit_ensemble, init_member
from scunlearn.vae.cellstats import read_cell_stats
from scunlearn.vae.checkpoints import load_checkpoint
from scunlearn.vae.dropout import arm_dropout
from scunlearn.vae.likelihood import ExactCounts, MemberCounts, count_codes_cached, log_factorial_cached
from scunlearn.vae.model import VAEConfig, build_vae
from scunlearn.vae.train import fit

CFG = VAEConfig(n_genes=60, hidden=[64, 32], latent=4, dropout=0.1)


def _data(n=300, g=60, seed=0):
    """Poisson counts of three cell types, with a few entries the NB count tables do not hold
    (a non-integer count and counts above the tables' 32), so that path is trained too."""
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.ones(g) * 0.5, size=3)
    X = rng.poisson(p[rng.integers(0, 3, size=n)] * rng.lognormal(6, 0.3, size=n)[:, None]).astype(np.float32)
    X[3, 5], X[11, 2], X[40, 7] = 2.5, 150.0, 0.5
    return torch.tensor(X)


def _solo(seed, X, train, val, cfg=CFG, **kw):
    seed_everything(seed)
    m = build_vae(cfg)
    return m, fit(m, X, train, val, seed=seed, **kw)


def test_members_start_and_draw_exactly_as_their_solo_runs():
    """Initial weights, dropout masks and reparameterisation noise of each member are bit for bit the solo run's."""
    B = 16
    for seed in (0, 7):
        state, gen = init_member(CFG, seed, "cpu")
        seed_everything(seed)
        solo = build_vae(CFG)
        for k, v in solo.state_dict().items():
            assert torch.equal(state[k], v), k
        solo.train()
        arm_dropout((solo.encoder, solo.decoder), B, torch.device("cpu"))
        solo_masks = [m.mask for s in (solo.encoder, solo.decoder) for m in s if getattr(m, "mask", None) is not None]
        solo_noise = torch.randn(B, CFG.latent)  # what randn_like(μ) draws next in VAE.loss
        masks = draw_masks([*CFG.hidden, *reversed(CFG.hidden)], CFG.dropout, B, [gen], "cpu")
        noise = draw_noise(B, CFG.latent, [gen], "cpu")
        assert len(masks) == len(solo_masks) == 4
        for a, b in zip(masks, solo_masks):
            assert torch.equal(a[0], b)
        assert torch.equal(noise[0], solo_noise)


def test_batched_loss_and_gradients_equal_each_members_own():
    """One batched step's loss and every parameter gradient are each member's VAE.loss and its gradient."""
    X = _data()
    seeds = [0, 1, 2]
    stack = StackedVAE(CFG, [init_member(CFG, s, "cpu")[0] for s in seeds], "cpu")
    rows = torch.tensor([[1, 3, 5, 11, 40, 60], [2, 3, 4, 7, 8, 9], [40, 41, 42, 43, 11, 0]])
    flat = rows.reshape(-1)
    x = X.index_select(0, flat)
    counts = MemberCounts.of(x.view(3, 6, -1), count_codes_cached(X).index(flat, x))
    lf = log_factorial_cached(X).index_select(0, flat).view(3, 6)
    loss = stack.loss(x.view(3, 6, -1), 0.5, lf, counts, None, torch.zeros(3, 6, CFG.latent))
    loss.sum().backward()
    for k, seed in enumerate(seeds):
        seed_everything(seed)
        m = build_vae(CFG).eval()  # no dropout; and z = μ (the zero noise above)
        xm = X[rows[k]]
        mu, logvar = m.encode(xm)
        t = m.terms(xm, sample=False, fused=True)
        ref = (t.nll + 0.5 * t.kl).mean()
        ref.backward()
        assert loss[k].item() == pytest.approx(ref.item(), rel=1e-6)
        for name, p in m.named_parameters():
            torch.testing.assert_close(stack.P[name].grad[k], p.grad, rtol=1e-4, atol=1e-5, msg=name)


def test_members_train_as_their_solo_runs_with_their_own_early_stopping():
    """Loss curves (rel 1e-5 per epoch), early-stopping and best epochs, and final weights match the
    solo runs, with members stopping at different epochs (the stack shrinks as they stop)."""
    X = _data()
    seeds = [0, 1, 2, 3]
    kw = dict(lr=2e-2, batch_size=8, max_epochs=40, kl_warmup_epochs=1, patience=3)
    train, val = np.arange(40), np.arange(200, 300)
    fitted = fit_ensemble(CFG, seeds, X, train, val, **kw)
    lengths = set()
    for seed, (m, hist) in zip(seeds, fitted):
        solo, ref = _solo(seed, X, train, val, **kw)
        assert list(hist.columns) == list(ref.columns)
        assert len(hist) == len(ref) < 40, seed
        lengths.add(len(hist))
        np.testing.assert_allclose(hist["train_loss"], ref["train_loss"], rtol=1e-5)
        np.testing.assert_allclose(hist["val_elbo"], ref["val_elbo"], rtol=1e-5)
        assert hist["best"].tolist() == ref["best"].tolist()
        np.testing.assert_array_equal(hist["kl_weight"], ref["kl_weight"])
        for name, v in solo.state_dict().items():
            torch.testing.assert_close(m.state_dict()[name], v, rtol=1e-3, atol=5e-4, msg=name)
    assert len(lengths) > 1  # members stopped at different epochs


def test_bench_ensemble_epoch_trains_every_member():
    """``Ensemble.run_epoch`` (the benchmark's loop) returns one finite loss per member and moves every member."""
    X = _data()
    ens = Ensemble(CFG, [3, 4], "cpu", 1e-2)
    before = ens.model.P["px.weight"].detach().clone()
    losses = ens.run_epoch(X, torch.arange(100), 16, 1.0)
    assert len(losses) == 2 and all(np.isfinite(losses))
    assert all(not torch.equal(before[k], ens.model.P["px.weight"][k]) for k in range(2))


def test_stage_writes_each_seeds_files_as_the_solo_stage(tmp_path):
    """stage_train_ensemble writes, per seed, a checkpoint, history and per-cell statistics that load with the
    existing readers and match stage_train's for that seed."""
    from scunlearn.stages.train import stage_train, stage_train_ensemble

    X = _data(n=200)
    names = np.array([f"c{i}" for i in range(200)])
    adata = ad.AnnData(X.numpy(), obs=pd.DataFrame(index=names), var=pd.DataFrame(index=[f"g{i}" for i in range(60)]))
    adata.layers["counts"] = X.numpy()
    write_h5ad(adata, tmp_path / "adata.h5ad")  # the project's writer: pandas 3's str names written plainly
    write_json({"train": list(names[:120]), "validation": list(names[120:160]), "audit": list(names[160:])},
               tmp_path / "split.json")
    write_json({"forget": list(names[:10])}, tmp_path / "forget.json")
    inp = {"adata": str(tmp_path / "adata.h5ad"), "split": str(tmp_path / "split.json"),
           "forget": str(tmp_path / "forget.json")}
    params = {"kind": "retrain", "device": "cpu", "model": {"hidden": [32, 16], "latent": 4, "dropout": 0.1},
              "train": {"lr": 1e-2, "batch_size": 16, "max_epochs": 4, "kl_warmup_epochs": 1, "patience": 2}}
    seeds = [5, 2]
    out = {k: [str(tmp_path / f"e{s}.{ext}") for s in seeds]
           for k, ext in (("model", "pt"), ("history", "history.tsv"), ("cells", "cells.npz"))}
    stage_train_ensemble(inp, out, {**params, "seeds": seeds}, 1)
    solo = {k: str(tmp_path / f"s2.{ext}") for k, ext in (("model", "pt"), ("history", "history.tsv"),
                                                           ("cells", "cells.npz"))}
    stage_train(inp, solo, {**params, "seed": 2}, 1)
    for i, seed in enumerate(seeds):
        model, meta = load_checkpoint(out["model"][i])
        assert meta["seed"] == seed and meta["kind"] == "retrain" and meta["n_train"] == 110
        stats = read_cell_stats(out["cells"][i], names)
        assert np.isfinite(stats["elbo"]).all()
    m_ens, meta_ens = load_checkpoint(out["model"][1])
    m_solo, meta_solo = load_checkpoint(solo["model"])
    assert set(meta_ens) == set(meta_solo)
    for k in ("seed", "n_train", "best_epoch", "epochs_run", "genes", "param_hash"):
        assert meta_ens[k] == meta_solo[k], k
    h_ens = pd.read_csv(out["history"][1], sep="\t")
    h_solo = pd.read_csv(solo["history"], sep="\t")
    assert list(h_ens.columns) == list(h_solo.columns) and len(h_ens) == len(h_solo)
    np.testing.assert_allclose(h_ens["val_elbo"], h_solo["val_elbo"], rtol=1e-5)
    a, b = read_cell_stats(out["cells"][1], names), read_cell_stats(solo["cells"], names)
    for k in ("elbo", "nll", "kl"):
        np.testing.assert_allclose(a[k], b[k], rtol=1e-4, atol=1e-3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_members_train_as_their_solo_runs_on_cuda():
    """On CUDA, each member's draws come from its own CUDA generator seeded as the solo run's global one."""
    X = _data().cuda()
    kw = dict(lr=1e-2, batch_size=16, max_epochs=4, kl_warmup_epochs=1, patience=2)
    train, val = np.arange(120), np.arange(200, 300)
    for seed, (m, hist) in zip([0, 1], fit_ensemble(CFG, [0, 1], X, train, val, **kw)):
        seed_everything(seed)
        solo = build_vae(CFG).cuda()
        ref = fit(solo, X, train, val, seed=seed, **kw)
        np.testing.assert_allclose(hist["val_elbo"], ref["val_elbo"], rtol=1e-4)
        for name, v in solo.state_dict().items():
            torch.testing.assert_close(m.state_dict()[name], v, rtol=1e-3, atol=5e-4, msg=name)


def test_exact_count_terms_equal_the_lookup_tables():
    """The static step's count terms (lgamma / digamma shifts for every entry) equal the tables' sums, the
    entries beyond the tables (a non-integer count, 150) included."""
    X = _data()
    rows = torch.tensor([[1, 3, 5, 11], [40, 41, 2, 0]])
    flat = rows.reshape(-1)
    x = X.index_select(0, flat)
    tables = MemberCounts.of(x.view(2, 4, -1), count_codes_cached(X).index(flat, x))
    assert tables.odd is not None  # the entries beyond the tables are in this batch
    exact = ExactCounts(x.view(2, 4, -1))
    theta = torch.rand(2, 1, X.shape[1]) * 20 + 0.05
    torch.testing.assert_close(exact.lgamma_shift(theta), tables.lgamma_shift(theta), rtol=1e-5, atol=2e-4)
    torch.testing.assert_close(exact.digamma_shift(theta), tables.digamma_shift(theta), rtol=1e-5, atol=2e-5)


def test_static_step_trains_as_the_eager_step():
    """The CUDA-graph step's logic run eagerly on the CPU (static buffers filled per batch, exact count
    terms, the partial last batch eager, buffers rebuilt as members stop): the same loss curves,
    early stopping and weights as the eager ensemble, up to float rounding."""
    X = _data()
    seeds = [0, 1, 2, 3]
    # 44 cells at batch 12: three full (static) batches and a partial one (eager) per epoch
    kw = dict(lr=2e-2, batch_size=12, max_epochs=40, kl_warmup_epochs=1, patience=3)
    train, val = np.arange(44), np.arange(200, 300)
    eager = fit_ensemble(CFG, seeds, X, train, val, step="eager", **kw)
    static = fit_ensemble(CFG, seeds, X, train, val, step="static", **kw)
    assert len({len(h) for _, h in eager}) > 1  # members stopped at different epochs: the stack shrank
    for (m_e, h_e), (m_s, h_s) in zip(eager, static):
        assert len(h_s) == len(h_e)
        assert h_s["best"].tolist() == h_e["best"].tolist()
        np.testing.assert_allclose(h_s["train_loss"], h_e["train_loss"], rtol=1e-5)
        np.testing.assert_allclose(h_s["val_elbo"], h_e["val_elbo"], rtol=1e-5)
        for name, v in m_e.state_dict().items():
            torch.testing.assert_close(m_s.state_dict()[name], v, rtol=1e-3, atol=5e-4, msg=name)


def test_static_step_reuses_its_buffers_and_the_default_cpu_step_is_eager():
    """A static step copies each batch into the same buffers (what a captured graph reads); on the CPU
    ``auto`` is the eager step, and a CUDA graph or an unknown step is refused with the reason."""
    X = _data()
    ens = Ensemble(CFG, [3, 4], "cpu", 1e-2, step="static")
    ens.run_epoch(X, torch.arange(48), 16, 1.0)
    st = ens._static
    ptr = st.x.data_ptr()
    before = st.x.clone()
    ens.run_epoch(X, torch.arange(48), 16, 1.0)
    assert ens._static is st and st.x.data_ptr() == ptr and st.graph is None and st.steps == 6
    assert not torch.equal(before, st.x)  # new rows were copied in
    assert Ensemble(CFG, [3], "cpu", 1e-2).step_mode == "eager"
    with pytest.raises(ScunlearnError, match="CUDA graphs need a CUDA device"):
        Ensemble(CFG, [3], "cpu", 1e-2, step="graph")
    with pytest.raises(ScunlearnError, match="not one of"):
        Ensemble(CFG, [3], "cpu", 1e-2, step="fast")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graph_step_trains_as_the_eager_step_on_cuda():
    """On CUDA the step is captured once and replayed; members train as with eager steps (float rounding)."""
    X = _data().cuda()
    kw = dict(lr=1e-2, batch_size=16, max_epochs=4, kl_warmup_epochs=1, patience=2)
    train, val = np.arange(120), np.arange(200, 300)
    ens = Ensemble(CFG, [0, 1], "cuda", 1e-2)
    assert ens.step_mode == "graph"
    ens.run_epoch(X, torch.arange(120, device="cuda"), 16, 1.0)
    assert ens._static.graph is not None
    eager = fit_ensemble(CFG, [0, 1], X, train, val, step="eager", **kw)
    graph = fit_ensemble(CFG, [0, 1], X, train, val, step="graph", **kw)
    for (m_e, h_e), (m_g, h_g) in zip(eager, graph):
        np.testing.assert_allclose(h_g["val_elbo"], h_e["val_elbo"], rtol=1e-4)
        for name, v in m_e.state_dict().items():
            torch.testing.assert_close(m_g.state_dict()[name], v, rtol=1e-3, atol=5e-4, msg=name)
