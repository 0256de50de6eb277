# Tables, figures and index.html from the metrics files alone (plus predictions for the scatter and
# the tiling QC thumbnails). The `report` config section is a param: changing it reruns only this.
rule report:
    input:
        metrics=all_metrics() + all_bulk_metrics(),
        predictions=all_predictions() + all_bulk_predictions(),
        qc=all_qc_thumbnails(),
    output:
        csv=report("results/report/summary.csv", caption="../report/summary.rst", category="Summary"),
        md="results/report/summary.md",
        tex=report("results/report/summary.tex", caption="../report/summary_tex.rst", category="Tables"),
        wide=report("results/report/wide.csv", caption="../report/wide.rst", category="Tables"),
        wide_md="results/report/wide.md",
        wide_tex="results/report/wide.tex",
        gains=report("results/report/gains.csv", caption="../report/gains.rst", category="Tables"),
        gains_md="results/report/gains.md",
        gains_tex="results/report/gains.tex",
        per_gene=report("results/report/per_gene.csv", caption="../report/per_gene.rst", category="Tables"),
        per_gene_md="results/report/per_gene.md",
        per_gene_tex="results/report/per_gene.tex",
        bars=report("results/report/bars.svg", caption="../report/bars.rst", category="Figures"),
        bars_png="results/report/bars.png",
        heatmap=report("results/report/heatmap.svg", caption="../report/heatmap.rst", category="Figures"),
        heatmap_png="results/report/heatmap.png",
        scatter=report("results/report/scatter.svg", caption="../report/scatter.rst", category="Figures"),
        scatter_png="results/report/scatter.png",
        missing=report("results/report/missing.csv", caption="../report/missing.rst", category="Tables"),
        html=report("results/report/index.html", caption="../report/index.rst", category="Summary"),
    params:
        out=parent_of_first_output,
        options=report_options,
    benchmark:
        "logs/benchmark/report/report.tsv"
    log:
        "logs/report.log",
    conda:
        "../../envs/histofuse.yaml"
    shell:
        "histofuse report --metrics {input.metrics:q} --predictions {input.predictions:q}"
        " --qc {input.qc:q} --options {params.options:q} --out {params.out:q} > {log:q} 2>&1"

