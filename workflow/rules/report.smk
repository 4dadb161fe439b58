# the HTML report: audit power, the per-cell method comparison, the paper's tables and the figures
# These lists must equal scunlearn.report.captions.TABLES / FIGURES (tests/report/test_report.py checks);
# the caption files ../report/<stem>.rst are generated: python -m scunlearn.report workflow/report


REPORT_TABLES = [
    "audit_power",
    "method_comparison",
    "table2_adversarial",
    "table3_fisher",
    "table4_utility",
    "table_all",
]
REPORT_FIGURES = [
    "fig1_per_cell_audit",
    "fig2_trajectories",
    "fig3_mlp_method_comparison",
    "fig4_mlp_summary",
    "fig5_privacy_utility",
    "fig6_mlp_seed_cis",
    "fig7_frontier",
]


rule report:
    input:
        summary=rules.aggregate.output.summary,
        controls=rules.aggregate.output.controls,
        verdicts=rules.aggregate.output.verdicts,
        frontier=rules.aggregate.output.frontier,
        cheapest=rules.aggregate.output.cheapest,
        adata=rules.preprocess.output.adata,
        trajectories=[f"{OUT}/models/{t['variant']}/{t['forget_set']}/seed{t['seed']}.tsv" for t in TRAJECTORIES],
        code=code("report:stage_report"),
    output:
        html=report(f"{OUT}/report/index.html", caption="../report/index.rst", category="Report"),
        tables=[
            report(f"{OUT}/report/tables/{t}.tsv", caption=f"../report/{t}.rst", category="Tables")
            for t in REPORT_TABLES
        ],
        figures=[
            report(f"{OUT}/report/figures/{f}.png", caption=f"../report/{f}.rst", category="Figures")
            for f in REPORT_FIGURES
        ],
    params:
        trajectories=TRAJECTORIES,
        config=config,
    log:
        f"{OUT}/logs/report.log",
    benchmark:
        f"{OUT}/benchmarks/report.tsv"
    conda:
        ENV_REPORT
    threads: 1
    resources:
        runtime=30,
    script:
        "../scripts/report.py"
