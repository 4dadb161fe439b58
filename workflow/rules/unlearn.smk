# one rule for every unlearning method variant: one job per {variant} / {forget}, unlearning from each of
# the audit.method_seeds baselines (its K members, written per seed as models/{variant}/{forget}/seed{s}.*)

# each variant's code: the unlearn stage's imports plus its own method's module (the registry imports
# it by name), so editing one method reruns that method's jobs only
UNLEARN_CODE = {
    v: code("unlearn:stage_unlearn", f"scunlearn.methods.{get_method(d['method']).module}") for v, d in VARIANTS.items()
}


rule unlearn:
    input:
        # extra inputs the variant's method declares, one per member (sisa's shards; see sisa.smk), none for most
        unpack(lambda w: {n: [METHOD_INPUTS[n](w, s) for s in METHOD_SEEDS] for n in METHOD_NEEDS[w.variant]}),
        adata=rules.preprocess.output.adata,
        split=rules.split.output.split,
        forget=rules.forget_set.output.forget,
        baseline=[f"{OUT}/models/baseline/seed{s}.pt" for s in METHOD_SEEDS],
        code=lambda w: UNLEARN_CODE[w.variant],
    output:
        **sealed(
            model=[f"{OUT}/models/{{variant}}/{{forget}}/seed{s}.pt" for s in METHOD_SEEDS],
            trajectory=[f"{OUT}/models/{{variant}}/{{forget}}/seed{s}.tsv" for s in METHOD_SEEDS],
            cells=[f"{OUT}/models/{{variant}}/{{forget}}/seed{s}.cells.npz" for s in METHOD_SEEDS],
        ),
    params:
        variant=lambda w: w.variant,
        method=lambda w: VARIANTS[w.variant]["method"],
        params=lambda w: VARIANTS[w.variant]["params"],
        seeds=METHOD_SEEDS,
        device=config["device"],
    log:
        f"{OUT}/logs/unlearn/{{variant}}/{{forget}}.log",
    benchmark:
        f"{OUT}/benchmarks/{{variant}}/{{forget}}.tsv"
    conda:
        ENV_TORCH
    threads: res("unlearn", "threads", 2)
    resources:
        mem_mb=res("unlearn", "mem_mb", 16000),
        # minutes: the configured runtime is per member
        runtime=res("unlearn", "runtime", 120) * len(METHOD_SEEDS),
        gpu=MODEL_GPUS,
    script:
        "../scripts/unlearn.py"
