"""The methods' and the attackers' progress lines: ``epoch i/max``, elapsed time and an ETA, in the log only."""

import copy
import logging
import re

import numpy as np

from scunlearn.membership.attackers import fit_score_batched, logged_progress
from scunlearn.methods import get_method, resolve_params
from scunlearn.methods.context import Trajectory, UnlearnContext
from tests.methods.test_methods import FAST, _toy

NOTE = "(max; early stopping may end sooner)"


def _lines(caplog, name):
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith(name + "  ")]


def test_an_expected_loop_counts_its_rows_and_the_rows_stay_as_they_were(caplog):
    t = Trajectory("v")
    with caplog.at_level(logging.INFO, logger="scunlearn.methods.context"):
        t.log(epoch=0, phase="baseline", forget_loss=0.9)
        t.expect("train", 3, upper_bound=True)
        for e in (1, 2):
            t.log(epoch=e, phase="train", forget_loss=0.9 + e / 100)
        t.log(epoch=2, phase="final", forget_loss=0.92)
    base, first, second, final = _lines(caplog, "v")
    assert base == "v  epoch 0  phase baseline  forget_loss 0.9"
    assert final == "v  epoch 2  phase final  forget_loss 0.92"
    assert first.startswith(f"v  epoch   1/3 {NOTE}  phase train  forget_loss 0.91  ")
    assert second.startswith("v  epoch   2/3  phase train  forget_loss 0.92  ") and NOTE not in second
    assert re.search(r"  \d+\.\d s elapsed, ETA ≤ \S+", first) and re.search(r"ETA ≤ ", second)
    assert t.rows[1] == {"epoch": 1, "phase": "train", "forget_loss": 0.91}  # the TSV's row: no progress in it


def test_fisher_counts_its_scrub_steps_and_fine_tuning_epochs(caplog):
    model, X, part = _toy()
    params = resolve_params("fisher", {"steps": 6, "log_every": 2, "fisher_cells": 50, "finetune_epochs": 2,
                                       "batch_size": 32, "patience": 5})
    ctx = UnlearnContext.build(model, X, part, seed=0, params=params, trajectory=Trajectory("fisher"))
    with caplog.at_level(logging.INFO, logger="scunlearn.methods.context"):
        get_method("fisher").fn(ctx)
    lines = _lines(caplog, "fisher")
    assert len(lines) == len(ctx.trajectory.rows)  # one line per row, as before
    scrub = [s for s in lines if "phase scrub" in s]
    assert [re.match(r"fisher  epoch 0  step +(\d+)/6", s).group(1) for s in scrub] == ["2", "4", "6"]
    tune = [s for s in lines if "phase finetune" in s]
    assert [re.match(r"fisher  epoch +(\d)/2", s).group(1) for s in tune] == ["1", "2"]
    assert NOTE in tune[0] and NOTE not in tune[1] and all(" elapsed, ETA " in s for s in scrub + tune)
    assert "ETA" not in lines[0] and "ETA" not in lines[-1]  # the baseline and final rows are no loop's


def test_a_fixed_length_loop_gives_a_plain_eta(caplog):
    model, X, part = _toy()
    params = resolve_params("frozen_critic", {"epochs": 2, "batch_size": 32, **FAST})
    ctx = UnlearnContext.build(model, X, part, seed=0, params=params, trajectory=Trajectory("fc"))
    with caplog.at_level(logging.INFO, logger="scunlearn.methods.context"):
        get_method("frozen_critic").fn(ctx)
    train = [s for s in _lines(caplog, "fc") if "phase train" in s]
    assert [s[len("fc  "):].split("  phase")[0] for s in train] == ["epoch   1/2", "epoch   2/2"]
    assert "ETA ≤" not in caplog.text and NOTE not in caplog.text and train[-1].endswith("ETA 0.0 s")


def test_the_audit_attack_logs_its_progress_and_the_methods_attackers_stay_silent(caplog):
    rng = np.random.default_rng(0)
    feats, y = rng.normal(size=(60, 5)), np.r_[np.ones(20), np.zeros(40)]
    masks = np.zeros((4, 60), dtype=bool)
    for b in range(4):
        masks[b, rng.choice(60, 45, replace=False)] = True
    cfg = {"hidden": [8], "dropout": 0.1, "lr": 1e-2, "weight_decay": 0.0, "epochs": 25}
    with caplog.at_level(logging.INFO, logger="scunlearn.membership.attackers"):
        quiet = fit_score_batched(feats, y, masks, cfg, seed=3)
        assert not caplog.records
        with logged_progress("MLP attack (2 folds × 2 repeats)"):
            loud = fit_score_batched(feats, y, masks, cfg, seed=3)
        again = fit_score_batched(feats, y, copy.deepcopy(masks), cfg, seed=3)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 13  # every 2 epochs of 25 (about ten lines), and the last
    assert lines[0].startswith("MLP attack (2 folds × 2 repeats): epoch   2/25 of 4 fold attackers")
    assert lines[-1].startswith("MLP attack (2 folds × 2 repeats): epoch  25/25") and lines[-1].endswith("ETA 0.0 s")
    assert all(" elapsed, ETA " in s for s in lines)
    np.testing.assert_array_equal(quiet, loud)  # logging only: the same scores
    np.testing.assert_array_equal(quiet, again)
