# Tables, figures and index.html from the metrics files alone (plus predictions for the scatter and
# the tiling QC thumbnails). The `report` config section is a param: changing it reruns only this.
rule report:
    input:
        metrics=PLAN.metrics_files(),
        predictions=PLAN.prediction_files(),
        qc=PLAN.qc_thumbnails(),
        design=PLAN.design_files(),
    output:
        csv=report(
            paths.report("summary.csv"), caption="../report/summary.rst", category="Summary"
        ),
        md=paths.report("summary.md"),
        tex=report(
            paths.report("summary.tex"), caption="../report/summary_tex.rst", category="Tables"
        ),
        wide=report(paths.report("wide.csv"), caption="../report/wide.rst", category="Tables"),
        wide_md=paths.report("wide.md"),
        wide_tex=paths.report("wide.tex"),
        gains=report(paths.report("gains.csv"), caption="../report/gains.rst", category="Tables"),
        gains_md=paths.report("gains.md"),
        gains_tex=paths.report("gains.tex"),
        per_gene=report(
            paths.report("per_gene.csv"), caption="../report/per_gene.rst", category="Tables"
        ),
        per_gene_md=paths.report("per_gene.md"),
        per_gene_tex=paths.report("per_gene.tex"),
        bars=report(paths.report("bars.svg"), caption="../report/bars.rst", category="Figures"),
        bars_png=paths.report("bars.png"),
        heatmap=report(
            paths.report("heatmap.svg"), caption="../report/heatmap.rst", category="Figures"
        ),
        heatmap_png=paths.report("heatmap.png"),
        scatter=report(
            paths.report("scatter.svg"), caption="../report/scatter.rst", category="Figures"
        ),
        scatter_png=paths.report("scatter.png"),
        missing=report(
            paths.report("missing.csv"), caption="../report/missing.rst", category="Tables"
        ),
        design=report(
            paths.report("design.csv"), caption="../report/design.rst", category="Summary"
        ),
        design_md=paths.report("design.md"),
        html=report(paths.report("index.html"), caption="../report/index.rst", category="Summary"),
    params:
        out=parent_of_first_output,
        options=PLAN.section_json("report"),
    resources:
        slurm_extra=refused_retry_after_user_error,
    benchmark:
        "logs/benchmark/report/report.tsv"
    log:
        "logs/report.log",
    conda:
        "../../envs/histofuse.yaml"
    shell:
        "histofuse report --metrics {input.metrics:q} --predictions {input.predictions:q}"
        " --qc {input.qc:q} --design {input.design:q} --options {params.options:q}"
        " --out {params.out:q} > {log:q} 2>&1"

