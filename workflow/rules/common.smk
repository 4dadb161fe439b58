# Shared definitions: config-derived names, wildcard constraints, tracked library code.
import json
import re
import sys
from pathlib import Path

BASE = Path(workflow.basedir)  # the repository root; paths below work from any --directory
sys.path.insert(0, str(BASE / "src"))

from snakemake.exceptions import WorkflowError
from scunlearn import ScunlearnError
from scunlearn.data.sources import PBMC33K_URL
from scunlearn.audit.attacks import ATTACKS as ATTACK_REGISTRY, mlp_fold_groups, resolve_attacks
from scunlearn.codedeps import stage_code
from scunlearn.methods import expand_variants, get_method

# Parameters are compared by their repr to decide reruns: sort every nested key so that
# reordering keys in a config file (or schema defaults filled in) never reruns a job.
_canonical = json.loads(json.dumps(config, sort_keys=True))
config.clear()
config.update(_canonical)

RUN = config["run"]
OUT = f"results/{RUN}"
FORGET = list(config["forget_sets"])
SEEDS = [int(s) for s in config["train"]["seeds"]]
# extra seeds of baseline and retrain models used only as references by the per-cell audit
REF_SEEDS = [int(s) for s in config["audit"]["reference_seeds"]]
if set(REF_SEEDS) & set(SEEDS):
    raise WorkflowError(
        f"config audit.reference_seeds {sorted(set(REF_SEEDS) & set(SEEDS))} repeat train.seeds: "
        "reference seeds must be other seeds"
    )
ALL_SEEDS = SEEDS + REF_SEEDS


def _method_seeds():
    """The baseline seeds every method variant unlearns from (audit.method_seeds): its K models per forget set."""
    spec = config["audit"]["method_seeds"]
    if spec == "train":
        return SEEDS
    if spec == "all":
        return ALL_SEEDS
    seeds = [int(s) for s in spec]
    unknown = sorted(set(seeds) - set(ALL_SEEDS))
    if unknown or len(set(seeds)) != len(seeds):
        raise WorkflowError(
            f"config audit.method_seeds ({', '.join(map(str, workflow.configfiles))}): {seeds} must be distinct "
            f"seeds of baseline models the study trains (train.seeds + audit.reference_seeds = {ALL_SEEDS}); "
            f"not trained: {unknown}"
        )
    return seeds


METHOD_SEEDS = _method_seeds()


def margin_of(forget):
    """A forget set's equivalence margin: its own (forget_sets.NAME.equivalence_margin) or audit.equivalence_margin."""
    return config["forget_sets"][forget].get("equivalence_margin", config["audit"]["equivalence_margin"])


def forget_spec(forget):
    """A forget set's definition, without what does not choose its cells (its margin is the audit's business)."""
    return {k: v for k, v in config["forget_sets"][forget].items() if k != "equivalence_margin"}


def seeds_of(model):
    """The audited seeds of a model: train.seeds for baseline and retrain, METHOD_SEEDS for a method variant."""
    return SEEDS if model in ("baseline", "retrain") else METHOD_SEEDS


# train.ensemble: all seeds of the baseline (and of each forget set's retrain) in one job, as one batched model
ENSEMBLE = bool(config["train"]["ensemble"])
try:  # every configured attack's parameters, defaults filled and checked now
    ATTACKS = resolve_attacks(config["audit"]["attacks"])
except ScunlearnError as e:
    raise WorkflowError(f"config: {e}") from None
if len(ALL_SEEDS) < 2:
    raise WorkflowError(
        "config: the per-cell audit needs at least 2 retrained models per forget set (a model is never "
        "its own reference): give train.seeds two seeds or add audit.reference_seeds"
    )
# the judge's negative control audits each retrained model leave-one-out against the others: with fewer than
# 3 models a test has fewer than 2 comparators and no spread to judge by, so the study cannot pass its controls
MIN_STUDY_MODELS = 3
if len(ALL_SEEDS) < MIN_STUDY_MODELS:
    _files = ", ".join(map(str, workflow.configfiles))
    _small = (
        f"config audit.reference_seeds ({_files}): {len(ALL_SEEDS)} retrained models per forget set "
        f"(train.seeds {SEEDS} + audit.reference_seeds {REF_SEEDS}), but the judge's negative control needs at "
        f"least {MIN_STUDY_MODELS}: each retrained model is tested leave-one-out against the others' spread. Add "
        "reference seeds, e.g. audit.reference_seeds: [100, 101, 102, 103, 104, 105] (8 models with two train "
        "seeds, as config/demo.yaml)"
    )
    if not config["audit"].get("allow_small_study", False):
        raise WorkflowError(f"{_small}; for a smoke run only, audit.allow_small_study: true lets it run")
    from snakemake.logging import logger

    logger.warning(f"warning: {_small}. Running anyway (audit.allow_small_study: true): do not trust its verdicts")
# Conda environments (--sdm conda), one per rule group; the rules import the library from src/
# (workflow/scripts/_stage.py puts it on sys.path), so the environments hold only third-party packages.
ENV_DATA = "../../envs/data.yaml"  # acquire, preprocess, split, forget sets: scanpy, no torch
ENV_REPORT = "../../envs/report.yaml"  # aggregate, report: pandas, matplotlib, no torch
# training, unlearning, matched negatives, audit: PyTorch; its CUDA build when config asks for CUDA
ENV_TORCH = "../../envs/torch-cuda.yaml" if str(config["device"]).startswith("cuda") else "../../envs/torch.yaml"
# GPUs per model job (baseline, retrain, unlearn, sisa_shards): 1 when config asks for CUDA, so that
# `--resources gpu=N` caps how many run on the GPU at once and the Slurm plugin asks for one (--gpus=1);
# else 0 (device auto, cpu, mps), which needs no gpu resource anywhere. auto is not resolved here: the
# workflow parses without torch (the login node, the Snakemake-only environment). Matched negatives,
# data and report rules run on the CPU: they never take a GPU. Audits: AUDIT_GPUS below.
MODEL_GPUS = 1 if str(config["device"]).startswith("cuda") else 0
# The audit's device (audit.device, default the study's): its MLP attack trains k x repeats attackers
# per model, 98% of a PBMC-size audit on a CPU and seconds on a GPU. audit.device: cpu keeps it off.
AUDIT_DEVICE = config["audit"].get("device") or config["device"]
AUDIT_GPUS = 1 if str(AUDIT_DEVICE).startswith("cuda") else 0
ENV_AUDIT = "../../envs/torch-cuda.yaml" if AUDIT_GPUS else "../../envs/torch.yaml"


def from_base(path):
    """A config path as given if it exists from the working directory, else relative to the repository."""
    p = Path(path)
    return str(p if p.is_absolute() or p.exists() else BASE / p)


MARKERS = from_base(config["preprocess"]["markers"])


def in_repo(path):
    """A path inside the repository: relative when Snakemake runs from the repository root, else absolute.

    Unlike from_base, the answer does not depend on whether the file exists yet, so a file
    that a rule creates (the PBMC-33k archive) keeps one name before and after it exists.
    """
    return str(path) if Path.cwd().resolve() == BASE.resolve() else str(BASE / path)


CONFIG_FILES = ", ".join(map(str, workflow.configfiles))  # named in parse-time errors
PBMC33K_DIR = in_repo("resources/pbmc33k")
PBMC33K_ARCHIVE = f"{PBMC33K_DIR}/pbmc33k_filtered_gene_bc_matrices.tar.gz"


def dataset_files():
    """The data files acquire reads, declared as its inputs so that a changed file reruns everything downstream.

    The PBMC-33k archive (downloaded by rule pbmc33k_archive), the user's h5ad / 10x_h5 file, or
    every file of a 10x_mtx folder; nothing for simulated data. A missing file fails here, at
    parse time, naming the key.
    """
    ds = config["dataset"]
    source = ds["source"]
    if source == "pbmc33k":
        return [PBMC33K_ARCHIVE]
    if source == "simulate":
        return []
    path = ds.get("path")
    if not path:
        raise WorkflowError(
            f"config dataset.path ({CONFIG_FILES}): not set, but dataset.source '{source}' reads your file from it"
        )
    p = Path(path)
    if not p.exists():
        raise WorkflowError(
            f"config dataset.path ({CONFIG_FILES}): {path} not found (source '{source}'; relative paths are read from the "
            f"working directory {Path.cwd()})"
        )
    if source == "10x_mtx":
        if not p.is_dir():
            raise WorkflowError(
                f"config dataset.path ({CONFIG_FILES}): {path} is not a folder, but source '10x_mtx' reads a matrix folder"
            )
        files = sorted(str(f) for f in p.iterdir() if f.is_file() and not f.name.startswith("."))
        if not files:
            raise WorkflowError(f"config dataset.path ({CONFIG_FILES}): the folder {path} is empty")
        return files
    if p.is_dir():
        raise WorkflowError(
            f"config dataset.path ({CONFIG_FILES}): {path} is a folder, but source '{source}' reads one file"
        )
    return [str(p)]


DATASET_FILES = dataset_files()


def _variants():
    """Resolve every configured method variant now, budget and parameter ladders expanded
    (scunlearn.methods.expand_variants): unknown methods or parameters fail at parse time."""
    try:
        return expand_variants(config["methods"], FORGET, int(config["train"]["max_epochs"]), CONFIG_FILES)
    except ScunlearnError as e:
        raise WorkflowError(str(e)) from None


VARIANTS = _variants()


def code(stage, *extra):
    """A rule's code inputs: the library files its stage function imports (``module:function`` under
    scunlearn.stages), followed transitively (scunlearn.codedeps), plus the scripts' shim. ``extra``:
    modules a registry imports by name at run time (a method's, an attack's). Editing one of these
    files reruns the rule; editing another does not."""
    files = stage_code(f"scunlearn.stages.{stage}", extra)
    return [in_repo(Path(f).relative_to(BASE.resolve())) for f in files] + [in_repo("workflow/scripts/_stage.py")]


def res(kind, key, default):
    return config.get("resources", {}).get(kind, {}).get(key, default)


def alternatives(names):
    """A wildcard constraint matching exactly these names (ladder variants hold '.', escaped)."""
    return "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True)) or "NONE"


wildcard_constraints:
    forget=alternatives(FORGET),
    variant=alternatives(VARIANTS),
    seed=r"\d+",


# ---- audit helpers


def _stem(model, forget, seed):
    return f"baseline/seed{seed}" if model == "baseline" else f"{model}/{forget}/seed{seed}"


# files a later stage reads and verifies against their recorded SHA-256 (scunlearn.io.verify_digest)
SEALED = (".pt", ".npz", ".json", ".h5ad")


def digest_of(path):
    """The digest record a stage writes beside ``path`` (``<path>.sha256``), for files it verifies on reading."""
    return f"{path}.sha256" if str(path).endswith(SEALED) else None


def sealed(**outputs):
    """A rule's named outputs plus the digest record of each file a later stage verifies, as ``<name>_sha256``:
    declared outputs, so that deleting a record reruns the job that writes it."""
    out = dict(outputs)
    for name, paths in outputs.items():
        records = [digest_of(p) for p in (paths if isinstance(paths, list) else [paths])]
        if any(records):
            out[f"{name}_sha256"] = [r for r in records if r] if isinstance(paths, list) else records[0]
    return out


def with_digests(files):
    """``files`` and the digest records beside those that have one."""
    return [x for f in files for x in (f, digest_of(f)) if x]


def seed_files(stem):
    """Each seed's checkpoint, history and per-cell statistics under models/{stem}/, in ALL_SEEDS order,
    with the digest records of the checkpoints and statistics."""
    return sealed(
        model=[f"{OUT}/models/{stem}/seed{s}.pt" for s in ALL_SEEDS],
        history=[f"{OUT}/models/{stem}/seed{s}.history.tsv" for s in ALL_SEEDS],
        cells=[f"{OUT}/models/{stem}/seed{s}.cells.npz" for s in ALL_SEEDS],
    )


def _trained_together(model):
    """How many seeds share the job that made a model's seed (the benchmark's wall time is split among them):
    all seeds of baseline and retrain under train.ensemble, the K members of a method variant's job."""
    if model in ("baseline", "retrain"):
        return len(ALL_SEEDS) if ENSEMBLE else 1
    return len(METHOD_SEEDS)


def _bench_stem(model, forget, seed):
    """The benchmark of the job that made a model's seed: the ensemble job's for baseline and retrain
    under train.ensemble (else the seed's own), the variant's job on the forget set for a method."""
    if model not in ("baseline", "retrain"):
        return f"{model}/{forget}"
    if _trained_together(model) > 1:
        return "baseline/ensemble" if model == "baseline" else f"retrain/{forget}/ensemble"
    return _stem(model, forget, seed)


def models_of(w):
    """Checkpoints, per-cell statistics and training benchmarks of every seed of an audited model (one
    audit job per forget set and model), and the references they share."""
    seeds = seeds_of(w.model)
    stems = [_stem(w.model, w.forget, s) for s in seeds]
    return {
        "models": [f"{OUT}/models/{stem}.pt" for stem in stems],
        "cells": [f"{OUT}/models/{stem}.cells.npz" for stem in stems],
        "benchmarks": [f"{OUT}/benchmarks/{_bench_stem(w.model, w.forget, s)}.tsv" for s in seeds],
        "ref_retrain": [f"{OUT}/models/retrain/{w.forget}/seed{s}.cells.npz" for s in ALL_SEEDS],
        "ref_baseline": [f"{OUT}/models/baseline/seed{s}.cells.npz" for s in ALL_SEEDS],
        "controls": [f"{OUT}/models/{v}/{w.forget}/seed{s}.cells.npz" for v in controls_of(w) for s in METHOD_SEEDS],
    }


def controls_of(w):
    """Fine-tuning control variants (method retain_finetune) run on this forget set at the audited variant's
    budget (a budget ladder's rung is compared with the control's rung of the same budget; variants without a
    budget with the controls without one), other than the audited one. So adding a budget to a ladder adds
    jobs without rerunning any other variant's audit."""
    budget = VARIANTS[w.model]["budget"] if w.model in VARIANTS else None
    return [
        v
        for v, d in VARIANTS.items()
        if d["method"] == "retain_finetune" and w.forget in d["forget_sets"] and v != w.model and d["budget"] == budget
    ]


def audit_names(w):
    """Names of the audited model's seeds (baseline and retrain are among their own references) and of
    the references, as the audit stage reports them."""
    own = w.model in ("baseline", "retrain")
    return {
        "self_names": [f"{w.model}/seed{s}" if own else None for s in seeds_of(w.model)],
        # an unlearned model is never compared with the retrained model of its own seed, which shares its
        # initialisation with the baseline it was unlearned from (not an independent reference)
        "exclude_names": [None if own else f"retrain/seed{s}" for s in seeds_of(w.model)],
        "ref_retrain": [f"retrain/seed{s}" for s in ALL_SEEDS],
        "ref_baseline": [f"baseline/seed{s}" for s in ALL_SEEDS],
        "controls": [f"{v}/seed{s}" for v in controls_of(w) for s in METHOD_SEEDS],
    }


def method_of(w):
    return w.model if w.model in ("baseline", "retrain") else VARIANTS[w.model]["method"]


def audited(forget):
    """Every model audited on one forget set: baseline and retrain seeds, then each variant's seeds."""
    names = ["baseline", "retrain"] + [v for v, d in VARIANTS.items() if forget in d["forget_sets"]]
    return [f"{OUT}/audit/{forget}/{m}/seed{s}.json" for m in names for s in seeds_of(m)]


TRAJECTORIES = [
    {"variant": v, "method": d["method"], "forget_set": f, "seed": s}
    for v, d in VARIANTS.items()
    for f in d["forget_sets"]
    for s in METHOD_SEEDS
]


def every_result():
    """Every intermediate result of the study: data, splits, checkpoints, trajectories and audits.

    They are targets of rule all because Snakemake rebuilds a missing file only when a job
    that consumes it has to run: with summary.tsv and the report up to date, a deleted
    checkpoint or audit record would otherwise stay deleted ("Nothing to be done") while
    summary.tsv kept its row. The digest records beside them are targets for the same reason (a deleted
    record reruns the job that writes it). data/raw.h5ad is left out on purpose: it may be deleted to save
    space once preprocessed (it is rebuilt only when preprocessing has to rerun).
    """
    files = [f"{OUT}/data/adata.h5ad", f"{OUT}/splits/split.json"]
    for f in FORGET:
        files += [f"{OUT}/splits/{f}.json", f"{OUT}/splits/matched_{f}.json", f"{OUT}/audit/{f}/controls.json"]
    for s in ALL_SEEDS:  # the reference seeds' models too: the audit reads only their .cells.npz
        for stem in ["baseline"] + [f"retrain/{f}" for f in FORGET]:
            files += [f"{OUT}/models/{stem}/seed{s}.{ext}" for ext in ("pt", "history.tsv", "cells.npz")]
    for t in TRAJECTORIES:
        stem = f"{OUT}/models/{t['variant']}/{t['forget_set']}/seed{t['seed']}"
        files += [f"{stem}.pt", f"{stem}.tsv"]
    files += [a for f in FORGET for a in audited(f)]
    return with_digests(files)
