# post-hoc audit of every model (fresh attacker each), then the tidy summary


rule audit:
    input:
        unpack(model_of),
        adata=rules.preprocess.output.adata,
        split=rules.split.output.split,
        forget=rules.forget_set.output.forget,
        matched=rules.matched_negatives.output.matched,
        markers=MARKERS,
        code=lib(
            "audit/attack.py",
            "membership.py",
            "audit/attacks/__init__.py",
            *[f"audit/attacks/{ATTACK_REGISTRY[a].module}.py" for a in ATTACKS],
            "audit/calibrated.py",
            "audit/data.py",
            "params.py",
            "audit/metrics.py",
            "cellstats.py",
            "matched.py",
            "audit/utility.py",
            "model.py",
            "train.py",
            "splits.py",
        ),
    output:
        audit=f"{OUT}/audit/{{forget}}/{{model}}/seed{{seed}}.json",
    params:
        run=RUN,
        dataset=config["dataset"]["source"],
        forget=lambda w: w.forget,
        variant=lambda w: w.model,
        method=method_of,
        model_seed=lambda w: int(w.seed),
        seed=config["seed"],
        audit={
            **{k: v for k, v in config["audit"].items() if k not in ("tolerance", "reference_seeds")},
            "attacks": ATTACKS,
        },
        self_name=lambda w: audit_names(w)["self_name"],
        ref_retrain=lambda w: audit_names(w)["ref_retrain"],
        ref_baseline=lambda w: audit_names(w)["ref_baseline"],
        controls=lambda w: audit_names(w)["controls"],
        target_sum=config["preprocess"]["target_sum"],
    log:
        f"{OUT}/logs/audit/{{forget}}/{{model}}/seed{{seed}}.log",
    benchmark:
        f"{OUT}/benchmarks/audit/{{forget}}/{{model}}/seed{{seed}}.tsv"
    wildcard_constraints:
        model=alternatives(["baseline", "retrain", *VARIANTS]),
    conda:
        ENV_TORCH
    threads: 1
    resources:
        mem_mb=8000,
        runtime=60,
    script:
        "../scripts/audit.py"


rule aggregate:
    input:
        audits=[a for f in FORGET for a in audited(f)],
        code=lib("audit/verdict.py", "audit/calibrated.py", "audit/summary.py"),
    output:
        summary=report(f"{OUT}/report/summary.tsv", caption="../report/summary.rst", category="Tables"),
    params:
        tolerance=config["audit"]["tolerance"],
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
