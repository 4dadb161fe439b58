"""Utility of a model: reconstruction error, marker-gene error, validation ELBO, latent accuracy."""

from __future__ import annotations

import logging

import numpy as np
import torch

from scunlearn.data.folds import stratified_test_folds
from scunlearn.vae.model import VAE, cell_terms, elbo

log = logging.getLogger(__name__)


@torch.no_grad()
def reconstruction_mse(model: VAE, X: torch.Tensor, idx, gene_mask: np.ndarray | None = None,
                       target_sum: float = 1e4) -> float:
    """MSE between log-normalised counts and log-normalised decoder means (z = μ, with library).

    Both sides use the cell's HVG library size: log1p(x / Σx · target_sum) versus
    log1p(mean / Σx · target_sum), the decoder mean being softmax × library.
    """
    t = cell_terms(model, X, idx, keep_mean=True)
    x = X[torch.as_tensor(np.asarray(idx), dtype=torch.long, device=X.device)]
    lib = x.sum(1, keepdim=True).clamp_min(1.0)
    truth = torch.log1p(x / lib * target_sum)
    pred = torch.log1p(t.mean / lib * target_sum)
    if gene_mask is not None:
        m = torch.as_tensor(gene_mask, dtype=torch.bool, device=X.device)
        truth, pred = truth[:, m], pred[:, m]
    return float(((truth - pred) ** 2).mean())


def _standardise(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both sets scaled by the train set's mean and SD (ddof 0; a constant column keeps scale 1)."""
    m, sd = train.mean(0), train.std(0)
    sd[sd == 0] = 1.0
    return (train - m) / sd, (test - m) / sd


def lbfgs(fun, w0: np.ndarray, max_iter: int = 2000, gtol: float = 1e-6, memory: int = 10) -> np.ndarray:
    """Minimise a smooth convex ``fun(w) -> (value, gradient)`` by L-BFGS with Armijo backtracking.

    Stops when the largest |gradient| entry is at most ``gtol`` (or after ``max_iter``
    steps, or when a step no longer lowers the value). Small and dependency-free: SciPy's
    optimizer costs ~0.6 s of import in every audit job.
    """
    w = np.array(w0, dtype=float)
    f, g = fun(w)
    if not (np.isfinite(f) and np.isfinite(g).all()):
        raise ValueError("lbfgs: the objective or its gradient is not finite at the start")
    S: list[np.ndarray] = []
    Y: list[np.ndarray] = []
    for _ in range(max_iter):
        if np.abs(g).max() <= gtol:
            break
        q = g.copy()  # two-loop recursion: q = H g
        rho = [1.0 / float(y @ s) for s, y in zip(S, Y)]
        alpha = []
        for s, y, r in zip(reversed(S), reversed(Y), reversed(rho)):
            a = r * float(s @ q)
            alpha.append(a)
            q -= a * y
        if S:
            q *= float(S[-1] @ Y[-1]) / float(Y[-1] @ Y[-1])
        for (s, y, r), a in zip(zip(S, Y, rho), reversed(alpha)):
            q += (a - r * float(y @ q)) * s
        d = -q
        slope = float(g @ d)
        if slope >= 0:  # not a descent direction (rounding): restart from steepest descent
            S.clear(), Y.clear()
            d, slope = -g, -float(g @ g)
        t = 1.0 if S else min(1.0, 1.0 / max(np.abs(g).sum(), 1e-12))
        for _ in range(60):
            f_new, g_new = fun(w + t * d)
            if f_new <= f + 1e-4 * t * slope:
                break
            t *= 0.5
        else:
            break  # no decrease along d: at the optimum to rounding
        s, y = t * d, g_new - g
        if float(s @ y) > 1e-12 * float(y @ y):
            S.append(s), Y.append(y)
            if len(S) > memory:
                S.pop(0), Y.pop(0)
        w, f, g = w + s, f_new, g_new
    if np.abs(g).max() > max(gtol, 1e-4):  # well short of the tolerance: say so, as scikit-learn warns
        log.warning("lbfgs: stopped with max |gradient| %.2g (tolerance %.2g)", float(np.abs(g).max()), gtol)
    return w


def fit_logistic(X: np.ndarray, y: np.ndarray, C: float = 1.0, max_iter: int = 2000,
                 gtol: float = 1e-8) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """L2-penalised logistic regression of labels ``y`` on X: (classes, coef (K or 1, d), intercept).

    scikit-learn's ``LogisticRegression(C)`` objective: the mean log-loss (binomial for two
    classes, multinomial beyond) plus ||coef||² / (2 C n), the intercept unpenalised,
    minimised from zero by :func:`lbfgs` to a far tighter tolerance than scikit-learn's
    default (whose intercepts sat up to ~0.08 off the optimum in the tests' cases), without
    scikit-learn's ~1.5 s import in every audit job.
    """
    classes, yi = np.unique(y, return_inverse=True)
    n, d = X.shape
    if not np.isfinite(X).all():
        raise ValueError("logistic regression: the features contain NaN or infinite values")
    if len(classes) < 2:
        raise ValueError("logistic regression needs at least two classes")
    k = 1 if len(classes) == 2 else len(classes)
    l2 = 1.0 / (C * n)
    Y = (yi[:, None] == (np.arange(k) + (k == 1))).astype(float)

    def loss_grad(w):
        W, b = w[: k * d].reshape(k, d), w[k * d:]
        F = X @ W.T + b
        if k == 1:  # binomial: log(1 + e^f) - y f
            f, t = F[:, 0], Y[:, 0]
            loss = np.logaddexp(0.0, f) - t * f
            G = (0.5 * (1.0 + np.tanh(0.5 * f)) - t)[:, None]
        else:  # multinomial: -log softmax(f)_y
            lse = F.max(1, keepdims=True)
            lse = lse + np.log(np.exp(F - lse).sum(1, keepdims=True))
            loss = (lse - F)[Y.astype(bool)]
            G = np.exp(F - lse) - Y
        G /= n
        value = float(loss.mean()) + 0.5 * l2 * float((W * W).sum())
        return value, np.r_[(G.T @ X + l2 * W).ravel(), G.sum(0)]

    w = lbfgs(loss_grad, np.zeros(k * (d + 1)), max_iter, gtol)
    return classes, w[: k * d].reshape(k, d), w[k * d:]


def predict_logistic(fit: tuple[np.ndarray, np.ndarray, np.ndarray], X: np.ndarray) -> np.ndarray:
    """Labels predicted by a :func:`fit_logistic` fit."""
    classes, W, b = fit
    F = X @ W.T + b
    return classes[(F[:, 0] > 0).astype(int)] if W.shape[0] == 1 else classes[F.argmax(1)]


def latent_accuracy(model: VAE, X: torch.Tensor, idx, labels, folds: int = 5, seed: int = 0) -> float:
    """Mean k-fold accuracy of a logistic regression predicting cell type from μ.

    Standardised on each training fold, then :func:`fit_logistic`; folds stratified and
    seeded as scikit-learn's ``StratifiedKFold(shuffle=True)`` (:mod:`scunlearn.data.folds`).
    """
    mu = cell_terms(model, X, idx).mu.double().cpu().numpy()
    if not np.isfinite(mu).all():  # a diverged model: no accuracy (a fit on NaN would predict one class)
        log.warning("latent accuracy: %d of %d cells have a non-finite latent mean; latent_acc is NaN",
                    int((~np.isfinite(mu)).any(1).sum()), len(mu))
        return float("nan")
    labels = np.asarray(labels)
    # classes with fewer cells than folds cannot be stratified: drop them from this metric
    keep_cls = [c for c, n in zip(*np.unique(labels, return_counts=True)) if n >= folds]
    keep = np.isin(labels, keep_cls)
    mu, labels = mu[keep], labels[keep]
    test_fold = stratified_test_folds(labels, folds, np.random.RandomState(seed))
    acc = []
    for f in range(folds):
        te = test_fold == f
        train, test = _standardise(mu[~te], mu[te])
        acc.append(float((predict_logistic(fit_logistic(train, labels[~te]), test) == labels[te]).mean()))
    return float(np.mean(acc))


def utility(model: VAE, X: torch.Tensor, *, recon_idx, val_idx, class_idx, labels, marker_mask,
            folds: int, seed: int, target_sum: float = 1e4) -> dict:
    """All utility metrics of one model (README, "What the audit does")."""
    return {
        "recon_mse": reconstruction_mse(model, X, recon_idx, None, target_sum),
        "marker_mse": reconstruction_mse(model, X, recon_idx, marker_mask, target_sum)
        if marker_mask is not None and marker_mask.any() else float("nan"),
        "val_elbo": elbo(model, X, val_idx),
        "latent_acc": latent_accuracy(model, X, class_idx, labels, folds, seed),
    }


def model_utility(model: VAE, X: torch.Tensor, part, labels: np.ndarray, marker_mask: np.ndarray, cfg: dict,
                  seed: int, target_sum: float = 1e4) -> dict:
    """:func:`utility` on the audit's seeded samples: reconstruction on unseen (validation + audit)
    cells, latent accuracy on all cells, each at most ``cfg['max_cells']``."""
    rng = np.random.default_rng(seed)
    unseen = np.r_[part.validation, part.audit]
    recon_idx = np.sort(rng.permutation(unseen)[: cfg["max_cells"]])
    class_idx = np.sort(rng.permutation(len(labels))[: cfg["max_cells"]])
    return utility(model, X, recon_idx=recon_idx, val_idx=part.validation, class_idx=class_idx,
                   labels=np.asarray(labels)[class_idx], marker_mask=marker_mask, folds=cfg["folds"], seed=seed,
                   target_sum=target_sum)
