"""Budget and parameter ladders (methods.NAME.budgets / ladder) and the machine-independent compute count."""

import copy

import pytest
import torch

from scunlearn import ScunlearnError
from scunlearn.methods import budget_epochs, expand_variants, get_method, resolve_params
from scunlearn.methods.compute import CellMeter
from scunlearn.methods.context import UnlearnContext
from tests.methods.test_members import _baselines, _stopping_toy
from tests.methods.test_methods import _toy


def test_a_budget_is_a_share_of_a_retrains_epochs():
    assert budget_epochs(0.15, 60) == 9 and budget_epochs(1.0, 60) == 60
    assert budget_epochs(0.001, 60) == 1  # at least one epoch
    assert budget_epochs(0.34, 3) == 1 and budget_epochs(0.67, 3) == 2


def test_ladders_expand_into_named_variants_with_their_params():
    v = expand_variants({
        "ft": {"method": "retain_finetune", "params": {"lr": 1e-4}, "budgets": [0.05, 0.25],
               "ladder": {"lr": [1e-4, 1e-3]}},
        "fi": {"method": "fisher", "budgets": [0.5], "forget_sets": ["a"]},
        "plain": {"method": "ssd"},
    }, ["a", "b"], 60)
    assert list(v) == ["ft@b0.05@lr0.0001", "ft@b0.05@lr0.001", "ft@b0.25@lr0.0001", "ft@b0.25@lr0.001",
                       "fi@b0.5", "plain"]
    assert v["ft@b0.25@lr0.001"]["params"]["epochs"] == 15 and v["ft@b0.25@lr0.001"]["params"]["lr"] == 1e-3
    assert v["ft@b0.25@lr0.001"]["line"] == "ft@lr0.001" and v["ft@b0.25@lr0.001"]["budget"] == 0.25
    # the fisher family's budget is its fine-tuning phase
    assert v["fi@b0.5"]["params"]["finetune_epochs"] == 30 and v["fi@b0.5"]["forget_sets"] == ["a"]
    assert v["plain"]["budget"] is None and v["plain"]["line"] == "plain" and v["plain"]["forget_sets"] == ["a", "b"]
    # every other parameter is the method's default, checked against its schema
    assert v["fi@b0.5"]["params"] == resolve_params("fisher", {"finetune_epochs": 30})


@pytest.mark.parametrize("cfg, message", [
    ({"s": {"method": "ssd", "budgets": [0.5]}}, "method ssd has no training loop to budget"),
    ({"f": {"method": "retain_finetune", "budgets": [0.5, 0.5]}}, "repeated budgets"),
    ({"f": {"method": "retain_finetune", "ladder": {"lrr": [1e-3]}}}, "'lrr' is not a parameter of method"),
    ({"f": {"method": "retain_finetune", "budgets": [0.5], "ladder": {"epochs": [3]}}}, "what budgets set"),
    ({"f": {"method": "fisher", "budgets": [0.5], "params": {"finetune_epochs": 3}}}, "finetune_epochs: it is what"),
    ({"f": {"method": "retain_finetune", "ladder": {"lr": [-1.0]}}}, "methods.f@lr-1.params.lr: -1.0 is less than"),
    ({"f": {"method": "retain_finetune", "budgets": [0.5]}, "f@b0.5": {"method": "fisher"}}, "exists already"),
])
def test_bad_ladders_are_refused_naming_the_key(cfg, message):
    with pytest.raises(ScunlearnError, match=message.replace(".", r"\.").replace("(", r"\(")):
        expand_variants(cfg, ["a"], 60)


def test_the_meter_counts_a_fine_tunings_cell_passes_solo_and_batched():
    """retain_finetune over E epochs passes each retain cell E times (a 1-cell last batch is skipped); evaluation
    passes are not counted. The batched form counts the same for each member."""
    X, part = _stopping_toy()
    params = resolve_params("retain_finetune", {"epochs": 3, "lr": 1e-3, "batch_size": 32, "patience": 5})
    spec = get_method("retain_finetune")
    model = _baselines([0])[0]
    ctx = UnlearnContext.build(copy.deepcopy(model), X, part, seed=0, params=params)
    with CellMeter() as meter:
        spec.fn(ctx)
    n = len(part.retain)
    assert meter.cells == 3 * n
    ctxs = [UnlearnContext.build(copy.deepcopy(m), X, part, seed=s, params=params)
            for s, m in zip([0, 1], _baselines([0, 1]))]
    spec.batch_fn(ctxs)
    assert [c.report["cell_passes"] for c in ctxs] == [3 * n, 3 * n]


def test_the_meter_counts_per_sample_gradients_of_a_fisher_and_nothing_without_gradients():
    from scunlearn.methods.fisher import cell_loss_fisher

    model, X, _ = _toy()
    with CellMeter() as meter:
        cell_loss_fisher(model, X[:50], chunk_size=16)
        with torch.no_grad():
            model.loss(X[:40])
    assert meter.cells == 50
    CellMeter.add(5)  # no meter active: nothing happens, nothing fails
