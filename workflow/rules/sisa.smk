# SISA (method sisa): the shards of the training cells, trained once per sisa variant and seed,
# and the extra inputs of the unlearn rule for methods that declare them (MethodSpec.needs)
from scunlearn.methods import get_method

SISA_VARIANTS = [v for v, d in VARIANTS.items() if d["method"] == "sisa"]
if "sisa_shards" in VARIANTS:  # its benchmarks/ and logs/ folders are the sisa_shards rule's
    raise WorkflowError("config methods.sisa_shards: the variant name 'sisa_shards' is reserved (rule sisa_shards)")


rule sisa_shards:
    input:
        adata=rules.preprocess.output.adata,
        split=rules.split.output.split,
        code=code("unlearn:stage_sisa_shards"),
    output:
        **sealed(
            model=f"{OUT}/sisa/{{variant}}/seed{{seed}}.pt",
            assignment=f"{OUT}/sisa/{{variant}}/seed{{seed}}.shards.json",
            history=f"{OUT}/sisa/{{variant}}/seed{{seed}}.history.tsv",
        ),
    params:
        variant=lambda w: w.variant,
        shards=lambda w: VARIANTS[w.variant]["params"]["shards"],
        seed=lambda w: int(w.seed),
        model=config["model"],
        train=TRAIN_PARAMS,
        device=config["device"],
    log:
        f"{OUT}/logs/sisa_shards/{{variant}}/seed{{seed}}.log",
    benchmark:
        f"{OUT}/benchmarks/sisa_shards/{{variant}}/seed{{seed}}.tsv"
    wildcard_constraints:
        variant=alternatives(SISA_VARIANTS),
    conda:
        ENV_TORCH
    threads: res("train", "threads", 2)
    resources:
        mem_mb=res("train", "mem_mb", 16000),
        runtime=res("train", "runtime", 120),
        gpu=MODEL_GPUS,
    script:
        "../scripts/sisa_shards.py"


# the extra inputs of the unlearn rule (see there): the names each variant's method declares
# (MethodSpec.needs; none for most methods), and name -> file for each name a method may declare
METHOD_NEEDS = {v: get_method(d["method"]).needs for v, d in VARIANTS.items()}
# (a function of the job's wildcards and one member's seed: the unlearn rule asks for each member's file)
METHOD_INPUTS = {
    "shards": lambda w, seed: rules.sisa_shards.output.model.format(variant=w.variant, seed=seed),
    "shard_assignment": lambda w, seed: rules.sisa_shards.output.assignment.format(variant=w.variant, seed=seed),
    "setup_benchmark": lambda w, seed: rules.sisa_shards.benchmark.format(variant=w.variant, seed=seed),
}
