# post-hoc audit of every model (fresh attackers each), then the tidy summary.
# One audit job per (forget set, model): it audits every seed of the model, reading the data
# and references once. A variant's seeds rerun together anyway (its params are shared), so
# this loses no rerun granularity; each seed keeps its own record, written atomically.
# Baseline and retrain are audited on train.seeds (rule audit), each method variant on
# audit.method_seeds (rule audit_method: its K unlearned models, one per baseline seed).


rule audit:
    input:
        unpack(models_of),
        adata=rules.preprocess.output.adata,
        split=rules.split.output.split,
        forget=rules.forget_set.output.forget,
        matched=rules.matched_negatives.output.matched,
        markers=MARKERS,
        code=code("audit:stage_audit", *[f"scunlearn.audit.attacks.{ATTACK_REGISTRY[a].module}" for a in ATTACKS]),
    output:
        **sealed(
            audits=[f"{OUT}/audit/{{forget}}/{{model}}/seed{s}.json" for s in SEEDS],
        ),
    params:
        run=RUN,
        dataset=config["dataset"]["source"],
        forget=lambda w: w.forget,
        forget_kind=lambda w: config["forget_sets"][w.forget]["kind"],
        variant=lambda w: w.model,
        method=method_of,
        model_seeds=lambda w: seeds_of(w.model),
        # models per benchmark: a seed's wall time is its job's over the seeds it trained at once
        bench_models=lambda w: [_trained_together(w.model)] * len(seeds_of(w.model)),
        seed=config["seed"],
        audit=lambda w: {
            **{
                k: v
                for k, v in config["audit"].items()
                if k not in ("tolerance", "reference_seeds", "device", "method_seeds")
            },
            "equivalence_margin": margin_of(w.forget),
            "attacks": ATTACKS,
        },
        self_names=lambda w: audit_names(w)["self_names"],
        exclude_names=lambda w: audit_names(w)["exclude_names"],
        ref_retrain=lambda w: audit_names(w)["ref_retrain"],
        ref_baseline=lambda w: audit_names(w)["ref_baseline"],
        controls=lambda w: audit_names(w)["controls"],
        target_sum=config["preprocess"]["target_sum"],
        device=AUDIT_DEVICE,
    log:
        f"{OUT}/logs/audit/{{forget}}/{{model}}.log",
    benchmark:
        f"{OUT}/benchmarks/audit/{{forget}}/{{model}}.tsv"
    wildcard_constraints:
        model="baseline|retrain",
    conda:
        ENV_AUDIT
    threads: 1
    resources:
        mem_mb=8000,
        runtime=60 * len(SEEDS),  # minutes: an hour per audited model, as when each had its own job
        gpu=AUDIT_GPUS,
    script:
        "../scripts/audit.py"


use rule audit as audit_method with:
    output:
        **sealed(
            audits=[f"{OUT}/audit/{{forget}}/{{model}}/seed{s}.json" for s in METHOD_SEEDS],
        ),
    wildcard_constraints:
        model=alternatives(VARIANTS),
    resources:
        mem_mb=8000,
        runtime=60 * len(METHOD_SEEDS),
        gpu=AUDIT_GPUS,


rule aggregate:
    input:
        audits=[a for f in FORGET for a in audited(f)],
        controls=[f"{OUT}/audit/{f}/controls.json" for f in FORGET],
        code=code("audit:stage_aggregate"),
    output:
        summary=report(f"{OUT}/report/summary.tsv", caption="../report/summary.rst", category="Tables"),
        controls=f"{OUT}/report/controls.tsv",
        verdicts=report(f"{OUT}/report/verdicts.tsv", caption="../report/verdicts.rst", category="Tables"),
        frontier=f"{OUT}/report/frontier.tsv",
        cheapest=f"{OUT}/report/frontier_cheapest.tsv",
    params:
        tolerance=config["audit"]["tolerance"],
        alpha=config["audit"]["alpha"],
        margin={f: margin_of(f) for f in FORGET},
        model_seeds=METHOD_SEEDS,
        all_seeds=ALL_SEEDS,
        # each variant's budget ladder (its line through the frontier) and budget
        ladders={v: {"line": d["line"], "budget": d["budget"]} for v, d in VARIANTS.items()},
    log:
        f"{OUT}/logs/aggregate.log",
    benchmark:
        f"{OUT}/benchmarks/aggregate.tsv"
    conda:
        ENV_REPORT
    threads: 1
    resources:
        runtime=10,
    script:
        "../scripts/aggregate.py"


# the judge's own controls: every baseline and retrained seed (reference seeds included) audited
# as a method against all the others, with the test the methods get
rule controls:
    input:
        adata=rules.preprocess.output.adata,
        split=rules.split.output.split,
        forget=rules.forget_set.output.forget,
        matched=rules.matched_negatives.output.matched,
        ref_retrain=[f"{OUT}/models/retrain/{{forget}}/seed{s}.cells.npz" for s in ALL_SEEDS],
        ref_baseline=[f"{OUT}/models/baseline/seed{s}.cells.npz" for s in ALL_SEEDS],
        code=code("audit:stage_controls"),
    output:
        **sealed(
            controls=f"{OUT}/audit/{{forget}}/controls.json",
        ),
    params:
        forget=lambda w: w.forget,
        forget_kind=lambda w: config["forget_sets"][w.forget]["kind"],
        per_cell=ATTACKS["per_cell"],
        alpha=config["audit"]["alpha"],
        margin=lambda w: margin_of(w.forget),
        names_retrain=[f"retrain/seed{s}" for s in ALL_SEEDS],
        names_baseline=[f"baseline/seed{s}" for s in ALL_SEEDS],
    log:
        f"{OUT}/logs/controls/{{forget}}.log",
    benchmark:
        f"{OUT}/benchmarks/controls/{{forget}}.tsv"
    conda:
        ENV_TORCH
    threads: 1
    resources:
        runtime=10,
    script:
        "../scripts/controls.py"
