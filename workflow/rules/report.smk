# the HTML report: the paper's tables and figures, regenerated with the noise shown


TRAJECTORIES = [
    {"variant": v, "method": d["method"], "forget_set": f, "seed": s}
    for v, d in VARIANTS.items()
    for f in d["forget_sets"]
    for s in SEEDS
]


rule report:
    input:
        summary=rules.aggregate.output.summary,
        adata=rules.preprocess.output.adata,
        trajectories=[f"{OUT}/models/{t['variant']}/{t['forget_set']}/seed{t['seed']}.tsv" for t in TRAJECTORIES],
        code=lib("report/__init__.py", "report/tables.py", "report/figures.py", "report/html.py"),
    output:
        html=report(
            f"{OUT}/report/index.html",
            caption="../report/index.rst",
            category="Report",
        ),
    params:
        trajectories=TRAJECTORIES,
        config=config,
    log:
        f"{OUT}/logs/report.log",
    benchmark:
        f"{OUT}/benchmarks/report.tsv"
    conda:
        ENV
    threads: 1
    script:
        "../scripts/report.py"
