# Summary tables from the metrics files alone.
rule report:
    input:
        metrics=all_metrics(),
    output:
        csv=report("results/report/summary.csv", caption="../report/summary.rst", category="Summary"),
        md="results/report/summary.md",
    params:
        out=parent_of_first_output,
    benchmark:
        "logs/benchmark/report/report.tsv"
    log:
        "logs/report.log",
    conda:
        "../../envs/histofuse.yaml"
    shell:
        "histofuse report --metrics {input.metrics:q} --out {params.out:q} > {log:q} 2>&1"
