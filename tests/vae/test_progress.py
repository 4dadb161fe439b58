"""Training logs a user can read: ``epoch i/max``, the time so far and an ETA, one line per epoch."""

import logging
import re

import numpy as np
import pytest
import torch

from scunlearn.costs import Progress, eta, format_duration
from scunlearn.runtime import seed_everything
from scunlearn.vae.batched import fit_ensemble
from scunlearn.vae.model import VAEConfig, build_vae
from scunlearn.vae.train import fit

CFG = VAEConfig(n_genes=30, hidden=[16], latent=3, dropout=0.1)
NOTE = "(max; early stopping may end sooner)"


@pytest.mark.parametrize("seconds, text", [(0, "0.0 s"), (12.34, "12.3 s"), (59.9, "59.9 s"), (59.96, "1m 00s"),
                                           (250, "4m 10s"), (3599.4, "59m 59s"), (3600, "1h 00m"),
                                           (7530, "2h 05m"), (-3, "0.0 s")])
def test_durations_read_as_a_person_would_say_them(seconds, text):
    assert format_duration(seconds) == text


def test_eta_is_the_remaining_units_at_the_pace_so_far():
    assert eta(4, 100, 12.3) == "12.3 s elapsed, ETA 4m 55s"  # 96 units at 3.075 s = 295.2 s
    assert eta(4, 100, 12.3, upper_bound=True) == "12.3 s elapsed, ETA ≤ 4m 55s"
    assert eta(10, 10, 8.0, upper_bound=True) == "8.0 s elapsed, ETA 0.0 s"  # done: no bound to speak of
    assert eta(0, 10, 0.2) == "0.2 s elapsed"  # no pace yet
    assert eta(12, 10, 6.0) == "6.0 s elapsed, ETA 0.0 s"  # past the plan: never negative


def test_progress_says_max_once_for_a_loop_that_may_stop_early():
    p = Progress(60, upper_bound=True)
    assert p.count(1) == f"epoch   1/60 {NOTE}"
    assert p.count(2) == "epoch   2/60"
    assert Progress(3, "shard").count(1) == "shard   1/3"
    assert re.fullmatch(r"\d+\.\d s elapsed, ETA ≤ \S.*", p.timing(2))


def _data(n=120, g=30, seed=0):
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.ones(g), size=2)
    return torch.tensor(rng.poisson(p[rng.integers(0, 2, size=n)] * 300).astype(np.float32))


def _epoch_lines(caplog, prefix=""):
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith(prefix + "epoch ")]


def test_fit_logs_each_epoch_of_its_max_with_an_eta(caplog):
    X = _data()
    seed_everything(0)
    m = build_vae(CFG)
    with caplog.at_level(logging.INFO, logger="scunlearn.vae.train"):
        hist = fit(m, X, np.arange(100), np.arange(100, 120), lr=1e-3, batch_size=32, max_epochs=4,
                   kl_warmup_epochs=1, patience=10, seed=0)
    lines = _epoch_lines(caplog)
    assert len(lines) == len(hist) == 4  # one line per epoch, as before
    assert [re.match(r"epoch +(\d+)/4", s).group(1) for s in lines] == ["1", "2", "3", "4"]
    assert NOTE in lines[0] and sum(NOTE in s for s in lines) == 1
    assert all(" elapsed, ETA " in s for s in lines) and lines[-1].endswith("ETA 0.0 s")
    assert "ETA ≤ " in lines[0]  # early stopping may end it sooner: the ETA is a bound


def test_early_stop_is_reported_against_the_max(caplog):
    X = _data()
    seed_everything(0)
    m = build_vae(CFG)
    with caplog.at_level(logging.INFO, logger="scunlearn.vae.train"):
        hist = fit(m, X, np.arange(20), np.arange(100, 120), lr=3e-2, batch_size=8, max_epochs=200,
                   kl_warmup_epochs=0, patience=2, seed=0)
    assert len(hist) < 200
    assert f"early stop after epoch {len(hist)} of at most 200" in caplog.text


def test_the_seed_batched_trainer_logs_each_members_epoch_with_the_shared_eta(caplog):
    X = _data()
    with caplog.at_level(logging.INFO, logger="scunlearn.vae.batched"):
        fit_ensemble(CFG, [0, 1], X, np.arange(100), np.arange(100, 120), lr=1e-3, batch_size=32, max_epochs=3,
                     kl_warmup_epochs=1, patience=10, step="eager")
    lines = [r.getMessage() for r in caplog.records if re.match(r"seed \d epoch ", r.getMessage())]
    assert len(lines) == 6  # one per member per epoch
    assert [re.match(r"seed (\d) epoch +(\d)/3", s).groups() for s in lines] == [
        ("0", "1"), ("1", "1"), ("0", "2"), ("1", "2"), ("0", "3"), ("1", "3")]
    assert sum(NOTE in s for s in lines) == 1 and all(" elapsed, ETA " in s for s in lines)
    assert lines[0].startswith("seed 0 epoch   1/3")  # the layout the workflow test reads
