"""The workflow's stages as plain functions of paths and parameters, one module per rule group.

Each Snakemake script calls :func:`run` with its stage function; the stage gets named
inputs, outputs and params as dicts, so every stage can be called (and tested) without
Snakemake. Logic lives in the layers below; a rule's code inputs are the modules its
stage function imports (:mod:`scunlearn.codedeps`).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import sys
import time
import traceback

from scunlearn import ScunlearnError
from scunlearn.costs import log_ready
from scunlearn.io import setup_logging

log = logging.getLogger(__name__)


def param_hash(obj) -> str:
    """Short stable hash of a JSON-able parameter set (shown in the summary)."""
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]


def package_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("scunlearn", "torch", "numpy", "scipy", "pandas", "anndata", "scanpy", "scikit-learn",
                "snakemake", "matplotlib", "seaborn"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def run(stage_fn, smk) -> None:
    """Entry point for ``workflow/scripts``: log to the rule's log file, run ``stage_fn``, log any error.

    Each script passes its stage function itself (``run(stage_train, snakemake)``), so a
    reader can follow the call from the rule to the code.
    """
    from scunlearn.runtime import tune_allocator

    stage = stage_fn.__name__.removeprefix("stage_")
    setup_logging(smk.log[0] if len(smk.log) else None)
    tune_allocator()
    inp = {k: v for k, v in smk.input.items()}
    out = {k: v for k, v in smk.output.items()}
    params = copy.deepcopy({k: v for k, v in smk.params.items()})
    log.info("stage %s: rule %s, wildcards %s, threads %d", stage, smk.rule, dict(smk.wildcards.items()), smk.threads)
    log_ready(log, "stage called")
    try:
        stage_fn(inp, out, params, smk.threads)
    except Exception as e:
        log.error("stage %s failed:\n%s", stage, traceback.format_exc())
        _tell_terminal(stage, smk, e)
        raise
    if "code" in inp:
        _check_code_inputs(list(inp["code"]))
    # the process's own CPU seconds: Snakemake's benchmark samples CPU time and misses the end of a job
    log.info("stage %s done, %.2fs CPU", stage, time.process_time())


def undeclared_code(declared: list[str]) -> list[str]:
    """Library files this process imported that are not among ``declared`` (a rule's code inputs)."""
    import os

    want = {os.path.realpath(p) for p in declared}
    got = {os.path.realpath(m.__file__) for name, m in list(sys.modules.items())
           if (name == "scunlearn" or name.startswith("scunlearn.")) and getattr(m, "__file__", None)}
    return sorted(got - want)


def _check_code_inputs(declared: list[str]) -> None:
    """Log whether the stage ran only library code its rule declares (scunlearn.codedeps): an edit to a
    file it ran but did not declare would not rerun the rule, leaving a stale result."""
    missing = undeclared_code(declared)
    if missing:
        log.warning("code inputs: %d library files ran but are not among the rule's code inputs, so editing "
                    "them would not rerun it: %s", len(missing), ", ".join(missing))
    else:
        log.info("code inputs: every library file the stage ran is among the rule's %d code inputs", len(declared))


def _tell_terminal(stage: str, smk, err: Exception) -> None:
    """Print the error's own message (not the traceback) to the terminal Snakemake runs in.

    The rule's log keeps the traceback; setup_logging sent sys.stderr there, so this writes
    to the process's original stderr, which Snakemake shows beside the failed job.
    """
    what = str(err) if isinstance(err, ScunlearnError) else f"{type(err).__name__}: {err}"
    logfile = smk.log[0] if len(smk.log) else None
    tail = f" (traceback in {logfile})" if logfile else ""
    try:
        print(f"scunlearn {stage} error: {what}{tail}", file=sys.__stderr__, flush=True)
    except (OSError, ValueError):
        pass
