# acquire (download | simulate | user file) -> preprocess -> split -> forget sets


if config["dataset"]["source"] == "pbmc33k":

    rule pbmc33k_archive:
        output:
            archive=PBMC33K_ARCHIVE,
        params:
            url=config["dataset"]["url"] or PBMC33K_URL,
        log:
            f"{OUT}/logs/pbmc33k_archive.log",
        conda:
            ENV_DATA
        threads: 1
        script:
            "../scripts/download.py"


rule acquire:
    input:
        data=DATASET_FILES,
        markers=MARKERS,
        code=code("data:stage_acquire"),
    output:
        **sealed(
            raw=f"{OUT}/data/raw.h5ad",
        ),
    params:
        dataset=config["dataset"],
        resources_dir=lambda w, input: (
            os.path.dirname(input.data[0]) if config["dataset"]["source"] == "pbmc33k" else ""
        ),
        checksums=from_base("resources/pbmc33k/checksums.tsv"),
    log:
        f"{OUT}/logs/acquire.log",
    benchmark:
        f"{OUT}/benchmarks/acquire.tsv"
    conda:
        ENV_DATA
    threads: 1
    resources:
        mem_mb=8000,
        runtime=60,
    script:
        "../scripts/acquire.py"


rule preprocess:
    input:
        raw=rules.acquire.output.raw,
        markers=MARKERS,
        code=code("data:stage_preprocess"),
    output:
        **sealed(
            adata=f"{OUT}/data/adata.h5ad",
        ),
    params:
        preprocess=config["preprocess"],
        seed=config["seed"],
    log:
        f"{OUT}/logs/preprocess.log",
    benchmark:
        f"{OUT}/benchmarks/preprocess.tsv"
    conda:
        ENV_DATA
    threads: 2
    resources:
        mem_mb=16000,
        runtime=60,
    script:
        "../scripts/preprocess.py"


rule split:
    input:
        adata=rules.preprocess.output.adata,
        code=code("data:stage_split"),
    output:
        **sealed(
            split=f"{OUT}/splits/split.json",
        ),
    params:
        splits=config["splits"],
        seed=config["seed"],
    log:
        f"{OUT}/logs/split.log",
    benchmark:
        f"{OUT}/benchmarks/split.tsv"
    conda:
        ENV_DATA
    threads: 1
    resources:
        runtime=10,
    script:
        "../scripts/split.py"


rule forget_set:
    input:
        adata=rules.preprocess.output.adata,
        split=rules.split.output.split,
        code=code("data:stage_forget"),
    output:
        **sealed(
            forget=f"{OUT}/splits/{{forget}}.json",
        ),
    params:
        name=lambda w: w.forget,
        spec=lambda w: forget_spec(w.forget),
        seed=config["seed"],
    log:
        f"{OUT}/logs/forget_set/{{forget}}.log",
    benchmark:
        f"{OUT}/benchmarks/forget_set/{{forget}}.tsv"
    conda:
        ENV_DATA
    threads: 1
    resources:
        runtime=10,
    script:
        "../scripts/forget.py"
