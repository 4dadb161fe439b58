# one rule for every unlearning method variant: {variant} / {forget} / {seed}

# each variant's code: the unlearn stage's imports plus its own method's module (the registry imports
# it by name), so editing one method reruns that method's jobs only
UNLEARN_CODE = {
    v: code("unlearn:stage_unlearn", f"scunlearn.methods.{get_method(d['method']).module}") for v, d in VARIANTS.items()
}


rule unlearn:
    input:
        # extra inputs the variant's method declares (sisa's shards; see sisa.smk), none for most
        unpack(lambda w: {n: METHOD_INPUTS[n](w) for n in METHOD_NEEDS[w.variant]}),
        adata=rules.preprocess.output.adata,
        split=rules.split.output.split,
        forget=rules.forget_set.output.forget,
        baseline=f"{OUT}/models/baseline/seed{{seed}}.pt",
        code=lambda w: UNLEARN_CODE[w.variant],
    output:
        **sealed(
            model=f"{OUT}/models/{{variant}}/{{forget}}/seed{{seed}}.pt",
            trajectory=f"{OUT}/models/{{variant}}/{{forget}}/seed{{seed}}.tsv",
            cells=f"{OUT}/models/{{variant}}/{{forget}}/seed{{seed}}.cells.npz",
        ),
    params:
        variant=lambda w: w.variant,
        method=lambda w: VARIANTS[w.variant]["method"],
        params=lambda w: VARIANTS[w.variant]["params"],
        seed=lambda w: int(w.seed),
        device=config["device"],
    log:
        f"{OUT}/logs/unlearn/{{variant}}/{{forget}}/seed{{seed}}.log",
    benchmark:
        f"{OUT}/benchmarks/{{variant}}/{{forget}}/seed{{seed}}.tsv"
    conda:
        ENV_TORCH
    threads: res("unlearn", "threads", 2)
    resources:
        mem_mb=res("unlearn", "mem_mb", 16000),
        runtime=res("unlearn", "runtime", 120),
        gpu=MODEL_GPUS,
    script:
        "../scripts/unlearn.py"
