"""An unlearning job's K members (one per baseline seed): batched members equal their solo runs.

The fine-tuning control has a batched form (all members as one stacked model); every other method's
members run in turn inside the job. Both must give, per seed, what a job of that seed alone gives.
"""

import copy

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

from scunlearn.data.splits import Partition
from scunlearn.io import write_h5ad, write_json
from scunlearn.methods import REGISTRY, get_method, resolve_params
from scunlearn.methods.context import UnlearnContext
from scunlearn.runtime import seed_everything
from scunlearn.vae.cellstats import read_cell_stats
from scunlearn.vae.checkpoints import load_checkpoint, save_checkpoint
from scunlearn.vae.model import VAEConfig, build_vae
from tests.methods.test_methods import _toy

#: batched kernels sum in another order: a member's weights differ from its solo run's by float rounding,
#: which epochs of Adam amplify (measured on these toys: at most 4e-7 absolute after 3-8 epochs, 1e-5 at
#: lr 0.1); the bound is 1e-5 absolute plus 1e-4 relative
BATCHED_RTOL, BATCHED_ATOL = 1e-4, 1e-5


def _baselines(seeds, g=40, hidden=(32, 16)):
    """One differently initialised 'baseline' per seed (the members start from different models)."""
    out = []
    for s in seeds:
        seed_everything(1000 + s)
        out.append(build_vae(VAEConfig(n_genes=g, hidden=list(hidden), latent=4, dropout=0.1)))
    return out


def _stopping_toy():
    """The toy with half of its rare type held out for validation: fine-tuning on the common type makes the
    validation ELBO fall within a few epochs, so members early-stop, at different epochs."""
    _, X, _ = _toy(n=240, n_rare=60)
    part = Partition(train=np.r_[0:30, 60:180], validation=np.r_[30:60, 180:190], audit=np.arange(210, 240),
                     forget=np.arange(0, 30), retain=np.arange(60, 180))
    return X, part


def test_batched_finetune_members_equal_their_solo_runs():
    """retain_finetune's batched form against K solo runs: weights and trajectories within float rounding,
    each member early-stopping on its own epoch (the stack drops it and goes on with the others)."""
    X, part = _stopping_toy()
    seeds = [0, 7, 3, 4]
    params = resolve_params("retain_finetune", {"epochs": 8, "lr": 3e-3, "batch_size": 32, "patience": 1})
    spec = get_method("retain_finetune")
    assert spec.batched
    solo = []
    for s, m in zip(seeds, _baselines(seeds)):
        ctx = UnlearnContext.build(copy.deepcopy(m), X, part, seed=s, params=params)
        solo.append((spec.fn(ctx), ctx.trajectory.frame()))
    ctxs = [UnlearnContext.build(copy.deepcopy(m), X, part, seed=s, params=params)
            for s, m in zip(seeds, _baselines(seeds))]
    batched = spec.batch_fn(ctxs)
    lengths = set()
    for (m_solo, t_solo), m_b, ctx in zip(solo, batched, ctxs):
        for k, v in m_solo.state_dict().items():
            torch.testing.assert_close(m_b.state_dict()[k], v, rtol=BATCHED_RTOL, atol=BATCHED_ATOL)
        t_b = ctx.trajectory.frame()
        assert list(t_b.columns) == list(t_solo.columns) and len(t_b) == len(t_solo)
        assert list(t_b["phase"]) == list(t_solo["phase"])
        np.testing.assert_allclose(t_b["val_elbo"].dropna(), t_solo["val_elbo"].dropna(), rtol=1e-5)
        np.testing.assert_allclose(t_b["forget_loss"], t_solo["forget_loss"], rtol=1e-4)
        lengths.add(len(t_b))
        assert not m_b.training
    assert len(lengths) > 1  # members stopped at different epochs
    for m_b, base in zip(batched, _baselines(seeds)):  # each member moved from its own baseline
        assert not torch.equal(m_b.state_dict()["px.weight"], base.state_dict()["px.weight"])


def test_batched_finetune_refuses_members_on_different_cells():
    _, X, part = _toy()
    params = resolve_params("retain_finetune", {"epochs": 1})
    a, b = _baselines([0, 1])
    ca = UnlearnContext.build(a, X, part, seed=0, params=params)
    cb = UnlearnContext.build(b, X * 2, part, seed=1, params=params)
    with pytest.raises(ValueError, match="same retain and validation cells"):
        get_method("retain_finetune").batch_fn([ca, cb])


def test_only_methods_with_a_batched_form_declare_one():
    """The registry's batched forms exist and take a list of contexts."""
    for name, spec in REGISTRY.items():
        if spec.batched:
            assert callable(spec.batch_fn), name
        else:
            with pytest.raises(Exception, match="no batched form"):
                _ = spec.batch_fn


def _job_inputs(tmp_path, seeds):
    """A tiny study on disk: counts, split, forget set and one baseline checkpoint per seed."""
    _, X, part = _toy(n=240)
    names = np.array([f"c{i}" for i in range(len(X))])
    adata = ad.AnnData(X.numpy(), obs=pd.DataFrame(index=names), var=pd.DataFrame(index=[f"g{i}" for i in range(40)]))
    adata.layers["counts"] = X.numpy()
    write_h5ad(adata, tmp_path / "adata.h5ad")
    write_json({"train": list(names[part.train]), "validation": list(names[part.validation]),
                "audit": list(names[part.audit])}, tmp_path / "split.json")
    write_json({"forget": list(names[part.forget])}, tmp_path / "forget.json")
    paths = []
    for s, m in zip(seeds, _baselines(seeds)):
        p = tmp_path / f"baseline{s}.pt"
        save_checkpoint(m, p, {"kind": "baseline", "seed": s, "genes": list(adata.var_names)})
        paths.append(str(p))
    inp = {"adata": str(tmp_path / "adata.h5ad"), "split": str(tmp_path / "split.json"),
           "forget": str(tmp_path / "forget.json"), "baseline": paths}
    return inp, names


def _outs(tmp_path, tag, seeds):
    return {k: [str(tmp_path / f"{tag}{s}.{ext}") for s in seeds]
            for k, ext in (("model", "pt"), ("trajectory", "tsv"), ("cells", "cells.npz"))}


@pytest.mark.parametrize("method, params, exact", [
    ("neggrad_plus", {"epochs": 2, "batch_size": 32, "beta": 0.9}, True),  # members in turn: bit for bit
    ("retain_finetune", {"epochs": 3, "batch_size": 32, "lr": 3e-3}, False),  # batched: float rounding
])
def test_unlearn_job_members_equal_jobs_of_one_seed(tmp_path, method, params, exact):
    """stage_unlearn with members [5, 2] writes, for seed 2, what a job of seed 2 alone writes."""
    from scunlearn.stages.unlearn import stage_unlearn

    seeds = [5, 2]
    inp, names = _job_inputs(tmp_path, seeds)
    job = {"variant": "v", "method": method, "params": params, "device": "cpu"}
    both = _outs(tmp_path, "both", seeds)
    stage_unlearn(inp, both, {**job, "seeds": seeds}, 1)
    alone = _outs(tmp_path, "alone", [2])
    stage_unlearn({**inp, "baseline": [inp["baseline"][1]]}, alone, {**job, "seeds": [2]}, 1)
    m_both, meta_both = load_checkpoint(both["model"][1])
    m_alone, meta_alone = load_checkpoint(alone["model"][0])
    assert meta_both["seed"] == meta_alone["seed"] == 2 and meta_both["baseline"] == inp["baseline"][1]
    for k, v in m_alone.state_dict().items():
        if exact:
            assert torch.equal(m_both.state_dict()[k], v), k
        else:
            torch.testing.assert_close(m_both.state_dict()[k], v, rtol=BATCHED_RTOL, atol=BATCHED_ATOL)
    a, b = read_cell_stats(both["cells"][1], names), read_cell_stats(alone["cells"][0], names)
    if exact:
        assert np.array_equal(a["elbo"], b["elbo"])
    else:
        np.testing.assert_allclose(a["elbo"], b["elbo"], rtol=1e-4, atol=1e-3)
    t_both = pd.read_csv(both["trajectory"][1], sep="\t")
    t_alone = pd.read_csv(alone["trajectory"][0], sep="\t")
    assert list(t_both["phase"]) == list(t_alone["phase"])
    # seed 5's member is its own model, not seed 2's
    m5, meta5 = load_checkpoint(both["model"][0])
    assert meta5["seed"] == 5 and not torch.equal(m5.state_dict()["px.weight"], m_both.state_dict()["px.weight"])
