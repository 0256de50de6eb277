# The slides page of a study without tasks (Snakefile's `all`): every slide with its tiles, its
# µm/px and where that came from, its warnings or error, and its QC picture, read from the tile
# jobs' stats files.
rule slides:
    input:
        PLAN.tile_stats()[0],
    output:
        csv=paths.report("slides.csv"),
        html=report(paths.report("slides.html"), caption="../report/slides.rst", category="Slides"),
    params:
        stats=PLAN.tile_stats()[1],
        out=parent_of_first_output,
    resources:
        slurm_extra=refused_retry_after_user_error,
    log:
        "logs/slides.log",
    conda:
        "../../envs/histofuse.yaml"
    shell:
        "histofuse slides --stats {params.stats:q} --out {params.out:q} > {log:q} 2>&1"
