"""The NB VAE: likelihood and KL maths, training behaviour, determinism, checkpoints, matched negatives."""

import numpy as np
import pytest
import torch
from scipy import stats

from scunlearn import ScunlearnError
from scunlearn.io import write_with_digest
from scunlearn.membership.matched import matched_negatives
from scunlearn.runtime import seed_everything
from scunlearn.vae.checkpoints import load_checkpoint, save_checkpoint
from scunlearn.vae.likelihood import CountCodes, CountIndex, kl_normal, nb_log_likelihood
from scunlearn.vae.model import VAEConfig, build_vae, elbo
from scunlearn.vae.train import fit, kl_weight
from tests.conftest import fresh_python


def test_nb_log_likelihood_matches_scipy():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 50, size=200).astype(float)
    mean = rng.uniform(0.05, 40, size=200)
    theta = rng.uniform(0.1, 20, size=200)
    ours = nb_log_likelihood(*(torch.tensor(v, dtype=torch.float64) for v in (x, mean, theta))).numpy()
    ref = stats.nbinom.logpmf(x, theta, theta / (theta + mean))
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)


def test_kl_matches_closed_form():
    torch.manual_seed(0)
    mu, logvar = torch.randn(7, 5, dtype=torch.float64), torch.randn(7, 5, dtype=torch.float64)
    ref = torch.distributions.kl_divergence(
        torch.distributions.Normal(mu, (0.5 * logvar).exp()), torch.distributions.Normal(0.0, 1.0)).sum(-1)
    torch.testing.assert_close(kl_normal(mu, logvar), ref)
    # one hand case: mu = 1, var = e  ->  0.5 (1 + e - 1 - 1) = (e - 1) / 2
    assert kl_normal(torch.tensor([[1.0]]), torch.tensor([[1.0]])).item() == pytest.approx((np.e - 1) / 2)


def _data(n=300, g=60, seed=0):
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.ones(g) * 0.5, size=3)
    lab = rng.integers(0, 3, size=n)
    lib = rng.lognormal(6, 0.3, size=n)
    X = rng.poisson(p[lab] * lib[:, None])
    return torch.tensor(X, dtype=torch.float32)


def _model(g=60, seed=0, dropout=0.1):
    seed_everything(seed)
    return build_vae(VAEConfig(n_genes=g, hidden=[64, 32], latent=4, dropout=dropout))


def test_small_model_overfits_one_batch():
    rng = np.random.default_rng(0)
    # 32 cells, each with its own sparse expression profile and a large library
    X = torch.tensor(rng.poisson(rng.dirichlet(np.full(60, 0.1), size=32) * 3000), dtype=torch.float32)
    m = _model(dropout=0.0)
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    with torch.no_grad():
        first = float(m.loss(X, beta=0.0))
    for _ in range(400):
        loss = m.loss(X, beta=0.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        assert float(m.loss(X, beta=0.0)) < first / 2


def test_same_seed_same_weights():
    X = _data()
    kw = dict(lr=1e-3, batch_size=32, max_epochs=3, kl_warmup_epochs=2, patience=5, seed=4)
    states = []
    for _ in range(2):
        m = _model(seed=4)
        fit(m, X, np.arange(250), np.arange(250, 300), **kw)
        states.append(m.state_dict())
    for k in states[0]:
        assert torch.equal(states[0][k], states[1][k]), k


def test_early_stopping_restores_best_epoch():
    X = _data()
    m = _model(dropout=0.0)
    # a large learning rate on few cells overfits fast: validation ELBO peaks, then falls
    hist = fit(m, X, np.arange(40), np.arange(200, 300), lr=2e-2, batch_size=8, max_epochs=60,
               kl_warmup_epochs=0, patience=3, seed=0)
    best = int(hist["val_elbo"].idxmax())
    assert len(hist) < 60 and best < len(hist) - 1  # stopped early, after the best epoch
    assert elbo(m, X, np.arange(200, 300)) == pytest.approx(hist["val_elbo"].max(), abs=1e-4)
    assert hist["best"].sum() >= 1 and bool(hist.loc[best, "best"])


def test_kl_weight_warmup():
    assert [kl_weight(e, 4) for e in range(6)] == [0, 0.25, 0.5, 0.75, 1, 1]
    assert kl_weight(0, 0) == 1.0


def test_checkpoint_roundtrip_weights_only(tmp_path):
    m = _model()
    save_checkpoint(m, tmp_path / "m.pt", {"seed": 1, "genes": ["a", "b"]})
    payload = torch.load(tmp_path / "m.pt", weights_only=True)
    assert payload["model_config"]["hidden"] == [64, 32]
    m2, meta = load_checkpoint(tmp_path / "m.pt")
    assert meta["seed"] == 1
    for k, v in m.state_dict().items():
        assert torch.equal(v, m2.state_dict()[k])
    write_with_digest(tmp_path / "bad.pt", lambda p: p.write_bytes(b"nope"))  # recorded, yet no checkpoint
    with pytest.raises(ScunlearnError, match="bad.pt: not a readable"):
        load_checkpoint(tmp_path / "bad.pt")


def test_matched_negatives_grow_k_when_neighbourhoods_collapse():
    rng = np.random.default_rng(0)
    forget = rng.normal(10, 0.01, size=(20, 2))  # a tight cluster
    audit = np.r_[rng.normal(10, 0.01, size=(3, 2)), rng.normal(0, 1, size=(200, 2))]
    bc = np.array([f"a{i}" for i in range(len(audit))])
    res = matched_negatives(forget, audit, bc, k=7, min_matched=None, forget_barcodes=[f"f{i}" for i in range(20)])
    assert res["size"] >= 100 and res["k_used"] > 7 and res["min_matched"] == 100
    assert {"a0", "a1", "a2"} <= set(res["barcodes"])  # the truly close cells are in
    assert len(res["distances"]) == len(res["nearest_forget"]) == res["size"]
    assert set(res["nearest_forget"]) <= {f"f{i}" for i in range(20)}
    wide = matched_negatives(rng.normal(0, 1, size=(20, 2)), audit, bc, k=7, min_matched=20)
    assert wide["k_used"] == 7
    with pytest.raises(ScunlearnError, match="audit pool has only 203 cells"):
        matched_negatives(forget, audit, bc, k=7, min_matched=500)


def test_nearest_rows_is_exact_knn():
    """matched.nearest_rows (brute force, no scikit-learn import) = sklearn's NearestNeighbors: same order and
    distances, in chunks or not; exact ties go to the lower index."""
    from sklearn.neighbors import NearestNeighbors

    from scunlearn.membership.matched import nearest_rows

    rng = np.random.default_rng(3)
    q, r = rng.normal(size=(25, 6)), rng.normal(size=(140, 6))
    d_ref, i_ref = NearestNeighbors(n_neighbors=140).fit(r).kneighbors(q)
    for chunk in (1 << 22, 50):               # one block, and one query row per block
        d, i = nearest_rows(q, r, chunk_elements=chunk)
        assert np.array_equal(i, i_ref)
        np.testing.assert_allclose(d, d_ref, rtol=0, atol=1e-12)
    d1, i1 = nearest_rows(q, r, k=3)
    assert i1.shape == (25, 3) and np.array_equal(i1, i_ref[:, :3])
    tie = nearest_rows(np.zeros((1, 2)), np.array([[1.0, 0.0], [0.0, 1.0], [0.0, -1.0]]))[1]
    assert tie.tolist() == [[0, 1, 2]]
    with pytest.raises(ValueError, match="same number of columns"):
        nearest_rows(q, r[:, :3])


def test_fused_training_loss_matches_terms():
    """VAE.loss (fused NB term, count tables) = the autograd formula of terms(): value and gradients."""
    torch.manual_seed(0)
    m = build_vae(VAEConfig(n_genes=60, hidden=[64, 32], latent=4, dropout=0.1)).double()
    with torch.no_grad():
        m.log_theta.normal_(0, 1)
    X = torch.poisson(torch.rand(40, 60, dtype=torch.float64) * 20)
    X[:, :5] = 0
    X[0, 7], X[1, 8] = 2.5, 200.0  # a non-integer and a count beyond the lookup tables
    X[2] = 0  # a cell without counts: finite, and equal in both
    # the table rows from a per-data-set CountCodes, as run_epoch passes them
    full = torch.cat([torch.poisson(torch.full((7, 60), 3.0, dtype=torch.float64)), X])
    rows = torch.arange(7, 47)
    out = []
    for fused in (False, True, "codes"):
        torch.manual_seed(3)  # same dropout masks and z draws
        m.zero_grad()
        if fused == "codes":
            loss = m.loss(X, beta=0.7, counts=CountCodes(full).index(rows, full[rows]))
        elif fused:
            loss = m.loss(X, beta=0.7)
        else:
            t = m.terms(X, sample=True)
            loss = (t.nll + 0.7 * t.kl).mean()
        loss.backward()
        out.append((loss.detach(), {k: v.grad.clone() for k, v in m.named_parameters()}))
    assert torch.isfinite(out[0][0])
    for other in out[1:]:
        torch.testing.assert_close(other[0], out[0][0], rtol=1e-12, atol=0)
        for k, g in out[0][1].items():
            torch.testing.assert_close(other[1][k], g, rtol=1e-9, atol=1e-12, msg=k)


def test_count_codes_give_each_batch_the_index_built_from_it():
    """CountCodes.index(rows) = CountIndex(X[rows]): the same table rows and the same odd entries,
    for batches with and without odd entries, in any row order."""
    g = torch.Generator().manual_seed(0)
    X = torch.poisson(torch.rand(50, 30, generator=g) * 12, generator=g)
    X[3, 4], X[3, 9], X[10, 0], X[11, 29], X[40, 2] = 31.0, 32.0, 2.5, 1e4, -1.0
    codes = CountCodes(X)
    assert codes.codes.dtype == torch.uint8 and codes.n_odd == int((X != X.clamp(0, 31).round()).sum())
    for rows in (torch.tensor([11, 3, 0, 40, 10, 3]), torch.tensor([0, 1, 2]), torch.randperm(50, generator=g)):
        x = X[rows]
        got, ref = codes.index(rows, x), CountIndex(x)
        odd_ref = set() if ref.odd is None else set(zip(*(t.tolist() for t in ref.odd)))
        odd_got = set() if got.odd is None else set(zip(*(t.tolist() for t in got.odd)))
        assert odd_got == odd_ref
        plain = torch.ones_like(x, dtype=torch.bool)
        for r, c in odd_ref:
            plain[r, c] = False
        assert torch.equal(got.k[plain], ref.k[plain])
        theta = torch.rand(30, dtype=torch.float64, generator=g) + 0.1
        torch.testing.assert_close(got.lgamma_shift(theta), ref.lgamma_shift(theta))
        torch.testing.assert_close(got.digamma_shift(theta), ref.digamma_shift(theta))
    assert {(3, 9), (10, 0), (11, 29), (40, 2)} <= set(zip(*(t.tolist() for t in CountIndex(X).odd)))


def test_dropout_keeps_each_entry_with_one_minus_p_and_is_unbiased():
    """The 16-bit-uniform dropout: keep rate 1 - p (to 2^-17), E[output] = input, gradient = the
    same mask, identity in eval mode, and the same masks for the same seed."""
    from scunlearn.vae.dropout import Dropout, dropout_keep

    for p in (0.1, 0.5, 0.9):
        torch.manual_seed(0)
        keep, scale = dropout_keep(torch.Size([400, 1000]), p)
        n_keep = int(keep.sum())
        p_eff = round(p * 65536) / 65536
        assert abs(p_eff - p) <= 2 ** -17 and scale == pytest.approx(1 / (1 - p_eff), rel=1e-12)
        # binomial: 5 standard deviations
        assert abs(n_keep - 4e5 * (1 - p_eff)) < 5 * (4e5 * p_eff * (1 - p_eff)) ** 0.5
    # masks of neighbouring entries are independent: 2x2 table of (entry, next entry)
    a, b = keep[:, 0::2].flatten().double(), keep[:, 1::2].flatten().double()
    assert abs(float((a * b).mean() - a.mean() * b.mean())) < 0.005
    drop = Dropout(0.25)
    x = torch.rand(300, 70, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(1)
    y = drop(x)
    y.sum().backward()
    factor = (y / x).detach()
    assert set(torch.unique(factor.round(decimals=9)).tolist()) == {0.0, round(1 / 0.75, 9)}
    torch.testing.assert_close(x.grad, factor)            # gradient through the same mask
    assert abs(float(factor.mean()) - 1.0) < 0.02          # unbiased
    torch.manual_seed(1)
    assert torch.equal(drop(x), y)                         # seeded
    from scunlearn.vae.dropout import dropout_mask
    for dtype in (torch.float32, torch.float64):           # the float mask = keep · scale of the same draws
        torch.manual_seed(2)
        keep, scale = dropout_keep(torch.Size([50, 33]), 0.3)
        torch.manual_seed(2)
        mask = dropout_mask(torch.Size([50, 33]), 0.3, dtype=dtype)
        assert mask.dtype == dtype and torch.equal(mask, keep.to(dtype) * scale)
    drop.eval()
    assert drop(x) is x
    assert isinstance(drop, torch.nn.Dropout) and not list(drop.parameters())



def test_vae_draws_every_layers_dropout_mask_at_once_and_uses_each_once():
    """VAE.loss arms all six dropout layers from one random block (arm_dropout): each layer gets its own
    (rows x width) mask with keep rate 1 - p, uses it in that forward pass only, and the loss equals the
    one computed with those masks applied by hand; eval mode arms nothing."""
    from scunlearn.vae.dropout import Dropout, arm_dropout

    torch.manual_seed(0)
    m = build_vae(VAEConfig(n_genes=40, hidden=[64, 32, 16], latent=4, dropout=0.2))
    drops = [d for stack in (m.encoder, m.decoder) for d in stack if isinstance(d, Dropout)]
    assert [d.width for d in drops] == [64, 32, 16, 16, 32, 64]
    m.train()
    arm_dropout((m.encoder, m.decoder), 500, torch.device("cpu"))
    masks = [d.mask for d in drops]
    assert [tuple(k.shape) for k in masks] == [(500, w) for w in (64, 32, 16, 16, 32, 64)]
    kept = torch.cat([(k > 0).flatten() for k in masks]).double()
    p_eff = round(0.2 * 65536) / 65536
    assert abs(float(kept.mean()) - (1 - p_eff)) < 5 * (p_eff * (1 - p_eff) / kept.numel()) ** 0.5
    assert not torch.equal(masks[1], masks[4])             # layers of equal width: different draws
    x = torch.poisson(torch.rand(500, 40) * 4)
    m.encoder(torch.log1p(x))
    assert all(d.mask is None for d in drops[:3]) and all(d.mask is not None for d in drops[3:])
    # VAE.loss: the armed masks, one random block before z's draw
    torch.manual_seed(5)
    loss = m.loss(x)
    assert all(d.mask is None for d in drops)
    torch.manual_seed(5)
    arm_dropout((m.encoder, m.decoder), 500, torch.device("cpu"))
    by_hand = [d.mask.clone() for d in drops]
    for d in drops:
        d.mask = None
    it = iter(by_hand)

    def apply_mask(mod, inp, out):
        return out * next(it)

    hooks = [d.register_forward_hook(apply_mask) for d in drops]
    for d in drops:
        d.eval()                                           # identity: the hook applies the mask instead
    loss_by_hand = m.loss(x)
    for h in hooks:
        h.remove()
    torch.testing.assert_close(loss, loss_by_hand)
    m.eval()
    m.loss(x)
    assert all(d.mask is None for d in drops)
def test_log_factorial_cache_follows_tensor_changes():
    from scunlearn.vae.likelihood import log_factorial_cached

    X = _data(n=20)
    first = log_factorial_cached(X)
    torch.testing.assert_close(first, torch.lgamma(X + 1).sum(-1))
    assert log_factorial_cached(X) is first  # cached
    X[0, 0] += 3  # in-place change: recomputed
    torch.testing.assert_close(log_factorial_cached(X), torch.lgamma(X + 1).sum(-1))


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_adam_is_torch_fused_adam_bit_for_bit(weight_decay):
    """scunlearn.optim.Adam (the fused kernel called directly) = torch.optim.Adam(fused=True): same
    parameters and state after steps where one parameter sometimes has no gradient."""
    from scunlearn.vae.optim import Adam

    def run(make):
        torch.manual_seed(0)
        lin, extra = torch.nn.Linear(7, 5), torch.nn.Parameter(torch.randn(3, 4))
        opt = make([*lin.parameters(), extra])
        x = torch.randn(20, 7)
        for step in range(6):
            opt.zero_grad(set_to_none=True)
            loss = lin(x).pow(2).mean() + (extra.pow(3).sum() if step % 2 == 0 else 0.0)
            loss.backward()
            opt.step()
        return [p.detach().clone() for p in (*lin.parameters(), extra)], opt

    ours, opt_o = run(lambda ps: Adam(ps, 0.01, weight_decay=weight_decay))
    ref, opt_r = run(lambda ps: torch.optim.Adam(ps, lr=0.01, weight_decay=weight_decay, fused=True))
    for a, b in zip(ours, ref):
        assert torch.equal(a, b)
    for p_o, p_r in zip(opt_o.param_groups[0]["params"], opt_r.param_groups[0]["params"]):
        for k in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(opt_o.state[p_o][k], opt_r.state[p_r][k]), k
    assert float(opt_o.state[opt_o.param_groups[0]["params"][-1]]["step"]) == 3  # stepped only with a gradient
    with pytest.raises(ValueError, match="floating-point CPU or CUDA"):
        Adam([torch.zeros(2, dtype=torch.long)], 0.1)


def test_adam_steps_a_gradient_laid_out_otherwise_as_its_contiguous_copy():
    """The fused kernel reads parameter and gradient as flat memory: a transposed gradient (what
    torch.autograd.grad returns for a batched matmul's weight) must be re-laid out first, not read in
    the wrong order (torch.optim.Adam(fused=True) on CPU gets this wrong, silently)."""
    from scunlearn.membership.attackers import BatchedAttackers
    from scunlearn.vae.optim import Adam

    torch.manual_seed(0)
    p0 = torch.randn(4, 6)
    g = torch.randn(6, 4).t()                    # a (4, 6) gradient with strides (1, 4)
    assert not g.is_contiguous()
    a, b = p0.clone().requires_grad_(), p0.clone().requires_grad_()
    a.grad, b.grad = g, g.contiguous()
    oa, ob = Adam([a], 0.1), Adam([b], 0.1)
    for _ in range(3):
        oa.step()
        ob.step()
    assert torch.equal(a, b)
    assert torch.equal(oa.state[a]["exp_avg_sq"], ob.state[b]["exp_avg_sq"])
    # where it bit: batched attackers trained from torch.autograd.grad learn as with .backward()
    X, y = torch.randn(40, 5), (torch.arange(40) % 3 == 0).float()
    X[y == 1] += 1.0

    def losses(use_grad_api):
        torch.manual_seed(1)
        att = BatchedAttackers(2, 5, hidden=(16,), dropout=0.0)
        params = list(att.parameters())
        opt, out = Adam(params, 0.01), []
        for _ in range(5):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(att(X.expand(2, 40, 5)), y.expand(2, 40))
            if use_grad_api:
                for q, gq in zip(params, torch.autograd.grad(loss, params)):
                    q.grad = gq
            else:
                opt.zero_grad(set_to_none=True)
                loss.backward()
            opt.step()
            out.append(loss.item())
        return out

    assert losses(True) == losses(False)

def test_training_does_not_import_dynamo():
    """A training job never imports torch._dynamo (1-1.7 s of CPU per process): fit, its Adam and seeding."""
    code = (
        "import sys, numpy as np, torch\n"
        "from scunlearn.vae.model import VAE, VAEConfig\nfrom scunlearn.runtime import seed_everything\n"
        "from scunlearn.vae.train import fit\n"
        "seed_everything(0, 1)\n"
        "X = torch.poisson(torch.rand(120, 30) * 5)\n"
        "m = VAE(VAEConfig(n_genes=30, hidden=[16, 8], latent=4))\n"
        "fit(m, X, np.arange(80), np.arange(80, 120), lr=1e-3, batch_size=16, max_epochs=2,\n"
        "    kl_warmup_epochs=1, patience=2, seed=0)\n"
        "print('torch._dynamo' in sys.modules)\n")
    assert fresh_python(code).strip() == "False"


def test_adam_counts_all_steps_with_one_add_and_keeps_counting_after_a_restore():
    """The step counters Adam creates are 0-d views of one tensor, stepped with one add; an
    extragradient-style snapshot / restore (in-place copies) keeps them so, and the numbers stay
    torch.optim.Adam(fused=True)'s."""
    from scunlearn.vae.optim import Adam, _restore, _snapshot

    def run(make, restore):
        torch.manual_seed(0)
        lin = torch.nn.Linear(6, 4)
        opt = make(list(lin.parameters()))
        x = torch.randn(10, 6)
        for step in range(5):
            snap = _snapshot(opt) if restore and step == 2 else None
            for _ in range(2 if snap is not None else 1):
                opt.zero_grad(set_to_none=True)
                lin(x).pow(2).mean().backward()
                opt.step()
                if snap is not None and _ == 0:
                    _restore(opt, snap)  # undo the first of the two steps
        return lin, opt

    lin, opt = run(lambda ps: Adam(ps, 0.01), restore=True)
    ref, opt_r = run(lambda ps: torch.optim.Adam(ps, lr=0.01, fused=True), restore=True)
    steps = [opt.state[p]["step"] for p in lin.parameters()]
    assert steps[0]._base is not None and all(s._base is steps[0]._base for s in steps)  # one counter tensor
    assert [float(s) for s in steps] == [5.0, 5.0]
    for p, q in zip(lin.parameters(), ref.parameters()):
        assert torch.equal(p, q)
        for k in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(opt.state[p][k], opt_r.state[q][k]), k
