"""Stages of the audit rules: the audit of every seed of a model, the judge's controls, the summary."""

from __future__ import annotations

import logging
import sys
import time

import pandas as pd

from scunlearn import ScunlearnError
from scunlearn.io import read_json, write_json, write_tsv

log = logging.getLogger(__name__)


def stage_audit(inp, out, params, threads):
    """Audit every seed of one model on one forget set: the shared data read once, then each model in turn.

    One job per (forget set, model): the data, split, matched negatives, fold groups and the
    references' statistics are the same for all seeds of a model, so they are read once.
    Each model's torch RNG is reset to the audit seed before it is audited, so its record
    is the same whichever seeds share its job; each record is written (atomically) as soon
    as it is done.
    """
    # the audit's imports, before the data are read: start-up is measured to the last ready mark
    # (in load_experiment), so they count as start-up, as they did with one job per model
    from scunlearn.audit import attacks, data, utility  # noqa: F401
    from scunlearn.audit.assemble import audit_model, audit_shared
    from scunlearn.costs import log_units
    from scunlearn.runtime import seed_everything
    from scunlearn.stages.common import job_device
    from scunlearn.vae.checkpoints import load_checkpoint  # noqa: F401

    models, cells, benches = list(inp["models"]), list(inp["cells"]), list(inp["benchmarks"])
    seeds, self_names, outs = list(params["model_seeds"]), list(params["self_names"]), list(out["audits"])
    if not len({len(models), len(cells), len(benches), len(seeds), len(self_names), len(outs)}) == 1:
        raise ScunlearnError(
            f"audit of {params['variant']} on {params['forget']}: {len(models)} checkpoints, {len(cells)} "
            f"cell statistics, {len(benches)} benchmarks, {len(seeds)} seeds, {len(self_names)} names and "
            f"{len(outs)} outputs: one of each per audited seed")
    seed_everything(int(params["seed"]), threads)
    # audit.device (default: the study's device): the attackers train there, the model and counts live there
    shared = audit_shared(inp, params, job_device(params.get("device") or "cpu"))
    log_units(log, len(models), "models audited")
    shares = list(params.get("bench_models") or [1] * len(models))
    excludes = list(params.get("exclude_names") or [None] * len(models))
    for model_path, cells_path, bench, model_seed, self_name, path, share, excl in zip(
            models, cells, benches, seeds, self_names, outs, shares, excludes):
        t0, c0 = time.perf_counter(), time.process_time()
        seed_everything(int(params["seed"]), threads)  # per model: its record never depends on its job-mates
        record = audit_model(shared, params, model_path, cells_path, bench, int(model_seed), self_name,
                             exclude=(excl,) if excl else ())
        if int(share) > 1:  # trained in one job with other seeds (train.ensemble): its share of the wall time
            record["wall_s"] = record["wall_s"] / int(share)
        write_json(record, path)
        log.info("audited %s/seed%s in %.1fs (%.1fs CPU): %s", params["variant"], model_seed,
                 time.perf_counter() - t0, time.process_time() - c0, path)
        # a line per model for the terminal: sys.stderr is the rule's log here, sys.__stderr__ the job's
        nan = float("nan")
        print(f"scunlearn: audited {params['variant']}/{params['forget']}/seed{model_seed}: pc_auc "
              f"{record.get('pc_auc', nan):.3f}, delta {record.get('delta_vs_retrain', nan):+.3g} vs retrain "
              f"(p {record.get('delta_vs_retrain_p', nan):.2g}, {record.get('test_vs_retrain', '?')})",
              file=sys.__stderr__, flush=True)


def stage_controls(inp, out, params, threads):
    """The judge's controls on one forget set: every baseline and retrained model audited against the others."""
    from scunlearn.audit.assemble import study_stats
    from scunlearn.audit.attacks.per_cell import is_type_level
    from scunlearn.audit.controls import control_trials, count_controls
    from scunlearn.audit.variants import record_margin

    pc = params["per_cell"]
    against = pc["negatives"]
    st = study_stats({**inp, "names_retrain": params["names_retrain"], "names_baseline": params["names_baseline"]},
                     pc["statistic"])
    trials = control_trials(st["retrain"], st["baselines"], st["pos"], st["negatives"],
                            strata=st["types"] if pc["centre_by_cell_type"] else None, test=pc["test"],
                            measure=pc["measure"], against=against, type_level=is_type_level(params["forget_kind"]),
                            alpha=params["alpha"], margin=record_margin(params["margin"]), n0=pc["shrinkage"])
    counts = count_controls(trials, params["alpha"])
    log.info("controls on %s (%s test of the %s, %s negatives): %d of %d baselines caught; %d of %d retrained "
             "models flagged at alpha/%d (%d rejected at alpha, %.2f expected under the null); controls_ok=%s",
             params["forget"], pc["test"], pc["measure"], against, counts["baseline_caught"], counts["n_baseline"],
             counts["retrain_false_alarms"], counts["n_retrain"], counts["n_retrain"],
             counts["retrain_rejected_at_alpha"], counts["expected_at_alpha"], counts["controls_ok"])
    for r in trials.itertuples():
        log.info("  %s %s: pc_auc %.3f, shift %+.3f, delta %+.3f, p %.4f, %s", r.kind, r.model, r.pc_auc, r.pc_shift,
                 r.delta, r.p, r.outcome)
    write_json({"forget_set": params["forget"], "test": pc["test"], "measure": pc["measure"], "negatives": against,
                "alpha": params["alpha"], **counts, "trials": trials.drop(columns="draw").to_dict("records")},
               out["controls"])


def stage_aggregate(inp, out, params, threads):
    from scunlearn.audit.summary import aggregate
    records = [read_json(p) for p in inp["audits"]]
    controls = [read_json(p) for p in inp["controls"]]
    df = aggregate(records, params["tolerance"], params["alpha"], controls, margin=params.get("margin"))
    from scunlearn.audit.variants import variant_verdicts
    from scunlearn.audit.verdict import power_summary

    trials = pd.DataFrame([{"forget_set": c["forget_set"], "test": c["test"], "measure": c["measure"],
                            "negatives": c["negatives"], **t}
                           for c in controls for t in c["trials"]])
    write_tsv(trials, out["controls"])
    for c in controls:
        log.info("controls on %s: %d of %d baseline models caught; %d of %d retrained models flagged at "
                 "alpha/%d (expected under the null: at most %.2f); %d rejected at alpha (expected %.2f); "
                 "controls_ok=%s", c["forget_set"], c["baseline_caught"], c["n_baseline"],
                 c["retrain_false_alarms"], c["n_retrain"], c["n_retrain"], c["expected_false_alarms"],
                 c["retrain_rejected_at_alpha"], c["expected_at_alpha"], c["controls_ok"])
    for fs, g in df.groupby("forget_set"):
        log.info("forget set %s: per-cell AUC by variant %s; verdicts %s", fs,
                 g.groupby("variant")["pc_auc"].mean().round(3).to_dict(),
                 g.groupby("variant")["verdict"].agg(lambda v: "/".join(v)).to_dict())
    for row in power_summary(df, params["alpha"]).to_dict("records"):
        log.info("audit power: %s", row)
    write_tsv(df, out["summary"])
    if out.get("verdicts"):
        ok = {c["forget_set"]: bool(c["controls_ok"]) for c in controls}
        if not ok:  # no controls stage: the controls counted over the audited seeds
            ok = df.groupby("forget_set")["controls_ok"].first().astype(bool).to_dict()
        margin = params.get("margin", 0.25)
        verdicts = variant_verdicts(records, margin, params["alpha"], ok, params.get("model_seeds"),
                                    params.get("all_seeds"))
        log_verdicts(verdicts)
        write_tsv(verdicts, out["verdicts"])
        if out.get("frontier"):
            from scunlearn.audit.frontier import cheapest, cheapest_sentence, frontier

            front = frontier(verdicts, df, params.get("ladders"))
            write_tsv(front, out["frontier"])
            best = cheapest(front)
            write_tsv(best, out["cheapest"])
            for r in best.to_dict("records"):
                log.info("frontier: %s", cheapest_sentence(r))


def log_verdicts(verdicts) -> None:
    """One line per forget set (its resolution and margin, in both units), then one per variant."""
    from scunlearn.audit.variants import RETRAIN_AS_METHOD

    for fs, g in verdicts.groupby("forget_set", sort=False):
        r = g.iloc[0]
        log.info("verdicts on %s: margin %.4g (%.3f of the baseline's lead %.4g); resolution for %d models %.4g "
                 "(%.3f of the lead)", fs, r["margin"], r["margin_of_gap"], r["baseline_gap"], r["n_models"],
                 r["resolution"], r["resolution_of_gap"])
        if r["margin"] < r["resolution"]:
            log.warning("forget set %s: the equivalence margin %.4g is finer than this study's resolution %.4g: even "
                        "a perfect method is unlikely to be certified SUCCESS; add train.seeds or widen "
                        "audit.equivalence_margin", fs, r["margin"], r["resolution"])
        for v in g.itertuples():
            log.info("  %s%s: %s (n=%d, delta %+.4g [%.4g, %.4g], gap closed %.3f, p_holm %.3g, tost_p_holm %.3g)%s",
                     v.variant, " (control)" if v.variant == RETRAIN_AS_METHOD else "", v.verdict, v.n_models,
                     v.delta, v.delta_ci_low, v.delta_ci_high, v.gap_closed, v.p_holm, v.tost_p_holm,
                     f"; {v.note}" if v.note else "")
