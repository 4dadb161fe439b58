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
            "audit/metrics.py",
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
        audit={k: v for k, v in config["audit"].items() if k != "tolerance"},
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
        code=lib("audit/verdict.py"),
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
