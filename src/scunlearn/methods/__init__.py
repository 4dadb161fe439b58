"""The registry of unlearning methods: name → implementation module, defaults, parameter schema.

This module (with :mod:`scunlearn.params`) imports no torch, numpy or scanpy: the Snakefile
imports it at parse time to check every configured variant's parameters, in an
environment that may hold only snakemake, jsonschema and pyyaml. The implementation
is imported only when :attr:`MethodSpec.fn` is first used (in the unlearning job).

Adding a method = its module + one :func:`spec` entry in the table below + a variant in
the config. The module ``methods/<module>.py`` defines ``def <function>(ctx:
UnlearnContext) -> VAE`` (by default ``function`` = the method's name); the entry holds
the defaults and the schema of its parameters, and is the one place users read them.

A method is called as ``fn(ctx)`` and must never need audit cells (it cannot reach them).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

from scunlearn import ScunlearnError
from scunlearn.params import (
    ATTACKER_SCHEMA,
    check_schema_covers,
    choice,
    int_list,
    integer,
    merge,
    number,
    obj,
    validate,
)


@dataclass(frozen=True)
class MethodSpec:
    """A registered method: defaults + schema now, the implementation lazily."""

    name: str
    module: str
    function: str
    defaults: dict
    schema: dict
    doc: str
    #: extra inputs the unlearn rule gives this method, by name (files the workflow makes for it,
    #: e.g. sisa's shard ensemble); they reach it as ``ctx.inputs[name]`` (paths), with the barcodes
    #: of its forget / retain / validation rows as ``ctx.inputs["barcodes"]``. Empty for most methods.
    needs: tuple[str, ...] = ()
    #: False when its models are not of the class the audit's references are (single VAEs of the
    #: training recipe): a shard ensemble, a DP-trained VAE. Per-cell statistics then shift by cell
    #: type for reasons other than membership, which the matched-negative AUC reads as a leak, so
    #: the audit reports the numbers but its verdict is NOT-COMPARABLE (see README "Verdicts").
    audit_comparable: bool = True
    #: for a method that is not audit_comparable: which claims its audit record can and cannot
    #: support (the report prints it beside its NOT-COMPARABLE verdict)
    audit_claim: str = ""
    #: the name of a batched form in the method's module, ``fn(ctxs) -> [VAE]``: the K members of an
    #: unlearning job (one per baseline seed) unlearned together as one stacked model, each as its solo
    #: run up to float rounding. Empty: the members run in turn (bit for bit their solo runs).
    batched: str = ""
    #: the parameter a budget ladder sets (``methods.NAME.budgets``): the epochs of its training loop over the
    #: retain cells. ``None`` for a method without one (ssd: no training; sisa: the train recipe's).
    budget_key: str | None = None

    @property
    def fn(self) -> Callable:
        """The implementation ``fn(ctx) -> VAE`` (imports its module, and torch, on first use)."""
        mod = importlib.import_module(f"{__name__}.{self.module}")
        return getattr(mod, self.function)

    @property
    def batch_fn(self) -> Callable:
        """The batched implementation ``fn(ctxs) -> [VAE]`` (see :attr:`batched`)."""
        if not self.batched:
            raise ScunlearnError(f"method {self.name} has no batched form")
        return getattr(importlib.import_module(f"{__name__}.{self.module}"), self.batched)


# Kept as the old name: code that did ``from scunlearn.methods import Method`` still works.
Method = MethodSpec

REGISTRY: dict[str, MethodSpec] = {}


def spec(name: str, defaults: dict, schema: dict, doc: str, module: str | None = None,
         function: str | None = None, needs: tuple[str, ...] = (), audit_comparable: bool = True,
         audit_claim: str = "", batched: str = "", budget_key: str | None = "") -> MethodSpec:
    """Add a method to the registry; its defaults must match its schema key for key.

    ``needs``: names of the extra inputs it needs from the workflow (see :attr:`MethodSpec.needs`);
    ``batched``: its batched form's function name (see :attr:`MethodSpec.batched`); ``budget_key``: the
    parameter a budget sets (default ``epochs`` if the method has one, else ``finetune_epochs``; None: no budget).
    """
    if name in REGISTRY:
        raise ValueError(f"method '{name}' registered twice")
    check_schema_covers(defaults, schema, f"method {name} defaults")
    if budget_key == "":
        budget_key = next((k for k in ("epochs", "finetune_epochs") if k in defaults), None)
    s = MethodSpec(name, module or name, function or name, defaults, schema, doc, tuple(needs),
                   bool(audit_comparable), audit_claim, batched, budget_key)
    REGISTRY[name] = s
    return s


def get_method(name: str) -> MethodSpec:
    """The registered method ``name``, or a clear error listing the known ones."""
    if name not in REGISTRY:
        raise ScunlearnError(f"unknown unlearning method '{name}'; registered: {sorted(REGISTRY)}")
    return REGISTRY[name]


def budget_epochs(budget: float, max_epochs: int) -> int:
    """A budget (a fraction of a retrain's cell-epochs: ``train.max_epochs`` passes over the retain cells) as
    the epochs of a method's loop over the retain cells: round(budget × max_epochs), at least 1."""
    return max(1, int(round(float(budget) * int(max_epochs))))


def _label(value) -> str:
    """A ladder value as a variant name shows it: numbers in their shortest form (0.15, 0.001, 1e-05)."""
    if isinstance(value, bool):
        return str(value).lower()
    return f"{value:g}" if isinstance(value, (int, float)) else str(value)


def expand_variants(methods: dict, forget_sets: list[str], max_epochs: int, files: str = "") -> dict[str, dict]:
    """Every method variant the config asks for, budget and parameter ladders expanded, parameters resolved.

    A variant with ``budgets: [b1, b2, ...]`` becomes one variant per budget, ``NAME@b<b>``, its method's
    :attr:`MethodSpec.budget_key` set to :func:`budget_epochs`; ``ladder: {param: [v1, v2]}`` adds one per
    value, ``NAME@<param><v>`` (all combinations, budget first). Each is a variant of its own (its jobs,
    reruns, audit and verdict); ``line`` names the ladder it belongs to (the variant without its budget),
    ``budget`` its budget (None without a ladder). Raises :class:`ScunlearnError` naming the key (and
    ``files``, the config files, after it).
    """
    import itertools

    out: dict[str, dict] = {}
    for name, v in methods.items():
        where = f"methods.{name}"
        at = f" ({files})" if files else ""
        if "forget_sets" in v and not v["forget_sets"]:
            raise ScunlearnError(
                f"config {where}.forget_sets{at}: an empty list, so variant '{name}' would run on no forget set and "
                f"silently drop out of the study. List the forget sets to run it on (of {forget_sets}), leave the "
                "key out to run it on all of them, or remove the variant")
        unknown = set(v.get("forget_sets", [])) - set(forget_sets)
        if unknown:
            raise ScunlearnError(f"config {where}.forget_sets{at}: unknown forget sets {sorted(unknown)}")
        spec_ = get_method(v["method"])
        budgets = list(v.get("budgets") or [])
        ladder = dict(v.get("ladder") or {})
        if budgets and spec_.budget_key is None:
            raise ScunlearnError(f"config {where}.budgets{at}: method {spec_.name} has no training loop to budget")
        if budgets and spec_.budget_key in (v.get("params") or {}):
            raise ScunlearnError(f"config {where}.params.{spec_.budget_key}{at}: it is what budgets set; give one or "
                                 "the other")
        if len(set(budgets)) != len(budgets):
            raise ScunlearnError(f"config {where}.budgets{at}: repeated budgets {budgets}")
        for key, values in ladder.items():
            if key not in spec_.defaults:
                raise ScunlearnError(f"config {where}.ladder{at}: {key!r} is not a parameter of method {spec_.name}")
            if key == spec_.budget_key and budgets:
                raise ScunlearnError(f"config {where}.ladder{at}: {key!r} is what budgets set; give one or the other")
            if not values:
                raise ScunlearnError(f"config {where}.ladder.{key}{at}: an empty list")
        keys = list(ladder)
        for b, combo in itertools.product(budgets or [None], itertools.product(*(ladder[k] for k in keys))):
            params = dict(v.get("params", {}))
            suffix = ""
            if b is not None:
                params[spec_.budget_key] = budget_epochs(b, max_epochs)
                suffix += f"@b{_label(b)}"
            tail = "".join(f"@{k}{_label(x)}" for k, x in zip(keys, combo))
            params.update(dict(zip(keys, combo)))
            variant = f"{name}{suffix}{tail}"
            if variant in out or (variant != name and variant in methods):
                raise ScunlearnError(f"config {where}{at}: its ladder names a variant '{variant}' that exists already")
            try:
                resolved = resolve_params(v["method"], params, variant)
            except ScunlearnError as e:
                raise ScunlearnError(f"config{at}: {e}") from None
            out[variant] = {"method": v["method"], "params": resolved,
                            "forget_sets": list(v.get("forget_sets", forget_sets)), "line": f"{name}{tail}",
                            "budget": None if b is None else float(b)}
    return out


def resolve_params(name: str, params: dict | None, variant: str | None = None) -> dict:
    """The method's defaults overridden by ``params``, checked against its schema.

    Unknown keys, wrong types and out-of-range values are :class:`ScunlearnError`\\ s
    naming ``methods.<variant>.params.<key>``.
    """
    m = get_method(name)
    where = f"methods.{variant or name}.params"
    out = merge(m.defaults, {} if params is None else params, where)
    validate(out, m.schema, where)
    return out


# ---------------------------------------------------------------------------------------
# The method table. Loss scale everywhere: per gene (the negative ELBO of a cell divided
# by the number of genes, ≈ 0.9 nats), the scale of the paper's reference code (a mean
# over matrix elements), so its λ, α and damping keep their meaning; see each module.

ATTACKER = {"hidden": [256, 256], "dropout": 0.3, "lr": 1e-3, "weight_decay": 1e-4, "epochs": 300}
SHADOW = {"hidden": [256, 256], "dropout": 0.3, "lr": 1e-3, "weight_decay": 1e-4, "epochs": 100}

_FINETUNE = {"finetune_epochs": 10, "finetune_lr": 1e-3, "batch_size": 128, "patience": 5}
_FINETUNE_SCHEMA = {"finetune_epochs": integer(0), "finetune_lr": number(positive=True),
                    "batch_size": integer(2), "patience": integer(1)}

spec("frozen_critic",
     {"n_critics": 1, "retain_weight": 5.0, "epochs": 10, "lr": 1e-4, "batch_size": 128, "match_k": 7,
      "critic": ATTACKER, "shadow": SHADOW, "shadow_every": 1},
     obj(n_critics=integer(1), retain_weight=number(positive=True), epochs=integer(1),
         lr=number(positive=True), batch_size=integer(2), match_k=integer(1), critic=ATTACKER_SCHEMA,
         shadow=ATTACKER_SCHEMA, shadow_every=integer(0)),
     "Frozen pre-trained critics; the VAE minimises retain_weight · per-gene retain loss "
     "+ the critics' membership score.")

spec("extragradient",
     {"retain_weight": 10.0, "n_attackers": 3, "epochs": 50, "lr": 1e-4, "attacker_lr_ratio": 5.0,
      "batch_size": 128, "validation_per_forget": 4, "match_k": 7,
      "attacker": {"hidden": [256, 256], "dropout": 0.3},
      "shadow": SHADOW, "shadow_every": 1,
      "early_stop": {"signal": "loss_gap", "target": 0.0, "tolerance": 0.002, "patience": 10,
                     "min_epochs": 5, "smoothing": 3}},
     obj(retain_weight=number(positive=True), n_attackers=integer(1), epochs=integer(1),
         lr=number(positive=True), attacker_lr_ratio=number(positive=True), batch_size=integer(2),
         validation_per_forget=integer(1), match_k=integer(1),
         attacker=obj(hidden=int_list(), dropout=number(0, 1)),
         shadow=ATTACKER_SCHEMA, shadow_every=integer(0),
         early_stop=obj(signal=choice("loss_gap", "shadow_auc"), target=number(), tolerance=number(0),
                        patience=integer(1), min_epochs=integer(0), smoothing=integer(1))),
     "Zero-sum extragradient game of the VAE against co-trained attackers; early stop on a forget/validation loss gap.")

spec("fisher",
     {"alpha": 1e-3, "damping": 0.1, "steps": 100, "max_rise": 0.5, "fisher_cells": 1000, "chunk_size": 128,
      **_FINETUNE, "match_k": 7, "log_every": 10},
     obj(alpha=number(positive=True), damping=number(positive=True), steps=integer(0), max_rise=number(positive=True),
         fisher_cells=integer(1), chunk_size=integer(1), **_FINETUNE_SCHEMA, match_k=integer(1),
         log_every=integer(1)),
     "Scrub: ascend the forget loss preconditioned by the inverse damped, unit-mean diagonal Fisher; "
     "then fine-tune on retain.")

spec("fisher_noise",
     {"alpha": 1e-4, "damping": 0.1, "fisher_cells": 1000, "chunk_size": 128, **_FINETUNE, "match_k": 7},
     obj(alpha=number(positive=True), damping=number(positive=True), fisher_cells=integer(1),
         chunk_size=integer(1), **_FINETUNE_SCHEMA, match_k=integer(1)),
     "Golatkar et al. (2020) Fisher forgetting: Gaussian noise of variance alpha / (F + damping) per parameter; "
     "then fine-tune.",
     module="fisher")

spec("retain_finetune",
     {"epochs": 10, "lr": 1e-3, "batch_size": 128, "patience": 5, "match_k": 7},
     obj(epochs=integer(1), lr=number(positive=True), batch_size=integer(2), patience=integer(1),
         match_k=integer(1)),
     "The control: fine-tune on retain cells only, exactly as the fine-tuning inside fisher.",
     batched="retain_finetune_members")

spec("relative_fisher",
     {"alpha": 3e-3, "damping": 0.1, "steps": 100, "max_rise": 0.5, "weighting": "share", "fisher_cells": 1000,
      "chunk_size": 128, **_FINETUNE, "match_k": 7, "log_every": 10},
     obj(alpha=number(positive=True), damping=number(positive=True), steps=integer(0), max_rise=number(positive=True),
         weighting=choice("share", "clipped_ratio"), fisher_cells=integer(1), chunk_size=integer(1),
         **_FINETUNE_SCHEMA, match_k=integer(1), log_every=integer(1)),
     "Paper future work 1: fisher's scrub with each parameter's step weighted by the forget set's share of its "
     "Fisher (F_F / (F_F + F_R), or min(1, F_F / F_R)), sparing parameters retained cells need; then fine-tune.")

spec("latent_projection",
     {"direction": "mean_diff", "shrinkage": 0.1, "epochs": 15, "lr": 3e-4, "batch_size": 128, "patience": 5,
      "match_k": 7},
     obj(direction=choice("mean_diff", "lda"), shrinkage=number(0, 1), epochs=integer(0), lr=number(positive=True),
         batch_size=integer(2), patience=integer(1), match_k=integer(1)),
     "Paper future work 2: project the forget-vs-retain latent direction out of the encoder's μ head "
     "(folded into its weights), then fine-tune the decoder only on retain.")

# ---- literature methods adapted to the unconditional VAE (see each module's docstring)

spec("neggrad_plus",
     {"beta": 0.99, "max_rise": 0.5, "epochs": 10, "lr": 1e-4, "batch_size": 128, "patience": 5, "match_k": 7},
     obj(beta=number(0, 1), max_rise=number(positive=True), epochs=integer(1), lr=number(positive=True),
         batch_size=integer(2), patience=integer(1), match_k=integer(1)),
     "Kurmanji et al. (2023) NegGrad+: minimise beta · retain loss − (1 − beta) · forget loss (per gene) with the "
     "control's recipe; ascent stops once the forget loss rose by max_rise. beta = 1 is retain_finetune.")

spec("scrub",
     {"msteps": 2, "epochs": 10, "alpha": 0.001, "gamma": 0.99, "decoder_weight": 0.0, "lr": 1e-4,
      "batch_size": 128, "forget_batch_size": 16, "match_k": 7},
     obj(msteps=integer(0), epochs=integer(1), alpha=number(0), gamma=number(positive=True),
         decoder_weight=number(0), lr=number(positive=True), batch_size=integer(2),
         forget_batch_size=integer(1), match_k=integer(1)),
     "Kurmanji et al. (2023) SCRUB: a student moves its posterior q(z|x) away from a frozen baseline teacher on "
     "forget cells (first msteps epochs) and towards it, plus the retain ELBO, on retain cells.")

spec("ssd",
     {"alpha": 10.0, "lambda": 1.0, "data_cells": 0, "chunk_size": 128, "match_k": 7},
     obj(alpha=number(positive=True), chunk_size=integer(1), data_cells=integer(0), match_k=integer(1),
         **{"lambda": number(positive=True)}),
     "Foster et al. (2024) Selective Synaptic Dampening: where the forget cells' diagonal Fisher exceeds alpha × "
     "the training set's, multiply the weight by min(lambda · I_D / I_f, 1). No training.", budget_key=None)

# ---- newer methods (2023-2024), adapted the same way (see each module's docstring)

_CONTROL = {"epochs": 10, "lr": 1e-3, "batch_size": 128, "patience": 5, "match_k": 7}
_CONTROL_SCHEMA = {"epochs": integer(1), "lr": number(positive=True), "batch_size": integer(2),
                   "patience": integer(1), "match_k": integer(1)}

spec("salun",
     {"mask_fraction": 0.5, "beta": 1.0, **_CONTROL},
     obj(mask_fraction=number(maximum=1, positive=True), beta=number(0), **_CONTROL_SCHEMA),
     "Fan et al. (2024) SalUn: only the top mask_fraction of weights by |∇ forget loss| (baseline, z = μ) are "
     "updated, on forget cells relabelled as random retain cells + beta · retain loss, with the control's recipe.")

spec("simnpo",
     {"beta": 2.5, "gamma": 0.0, "retain_weight": 1.0, "reference": "none", **_CONTROL},
     obj(beta=number(positive=True), gamma=number(), retain_weight=number(0), reference=choice("none", "baseline"),
         **_CONTROL_SCHEMA),
     "Fan et al. (2024) SimNPO: −(2/β) log σ(β · per-gene forget loss − γ) + retain_weight · retain loss with the "
     "control's recipe; reference: baseline = NPO (Zhang et al. 2024), β · (ℓ − ℓ_baseline). Bounded gradient.")

spec("selective_amnesia",
     {"surrogate": "retain_mean", "replay": "both", "ewc_lambda": 2.0e5, "fisher_cells": 1000, "chunk_size": 128,
      **_CONTROL},
     obj(surrogate=choice("retain_mean", "uniform"), replay=choice("both", "retain", "generated"),
         ewc_lambda=number(0), fisher_cells=integer(1), chunk_size=integer(1), **_CONTROL_SCHEMA),
     "Heng & Soh (2023) Selective Amnesia: forget cells decode a surrogate profile, replay (baseline samples "
     "and/or retain cells) and an EWC penalty λ/2 Σ F (θ − θ*)² (retain Fisher) keep the rest; control's recipe.")

spec("dp_retrain",
     {"epsilon": 8.0, "noise_multiplier": None, "delta": None, "max_grad_norm": 0.3, "epochs": 30, "lr": 3e-3,
      "batch_size": 128, "kl_warmup_epochs": 10, "patience": 10, "match_k": 7},
     obj(epsilon={"type": ["number", "null"], "exclusiveMinimum": 0},
         noise_multiplier={"type": ["number", "null"], "exclusiveMinimum": 0},
         delta={"type": ["number", "null"], "exclusiveMinimum": 0, "exclusiveMaximum": 1},
         max_grad_norm=number(positive=True), epochs=integer(1), lr=number(positive=True), batch_size=integer(1),
         kl_warmup_epochs=integer(0), patience=integer(1), match_k=integer(1)),
     "A private-training anchor, not unlearning: a fresh VAE trained with DP-SGD (Abadi et al. 2016, Opacus) "
     "on retain ∪ forget cells at a target epsilon (or a given noise_multiplier); delta null = 1/(10 n_train).",
     audit_comparable=False,
     audit_claim="Supports: the accountant's (ε, δ) bound, which holds for every training cell, forget cells "
     "included (a membership attack's TPR ≤ e^ε·FPR + δ), and its utility cost. Cannot support: a verdict "
     "from the per-cell audit, whose references are non-private VAEs; DP training changes every cell's fit, "
     "which the calibrated score reads as membership or its absence.")

spec("sisa",
     {"shards": 4, "match_k": 7},
     obj(shards=integer(1), match_k=integer(1)),
     "Bourtoule et al. (2021) SISA, exact unlearning: S shards trained independently from the start "
     "(training recipe = config train); retrain from scratch only the shards holding forget cells. "
     "The audited model is the shard ensemble.",
     needs=("shards", "shard_assignment", "setup_benchmark"), audit_comparable=False, budget_key=None,
     audit_claim="Supports: exact unlearning by construction (every shard holding a forget cell is retrained "
     "from scratch without it, so no parameter ever saw it), its request and up-front costs against retrain, "
     "and its utility. Cannot support: a SUCCESS or FAIL from the per-cell audit, whose references are single "
     "VAEs trained on every retain cell; an ensemble of shards each trained on 1/S of the cells differs from "
     "them by model class, which the calibrated score cannot tell from membership.")
