# The synthetic demo cohort, generated only when `demo.enabled` is true.
# With `demo.hest_bench` it also writes the first slide of each patient as a HEST-Bench task
# folder (hest-bench/ beside the sheet), its patches cut at the tiling's size and µm/px.
if config["demo"]["enabled"]:
    DEMO = PLAN.demo_outputs()

    rule demo_cohort:
        output:
            sheet=config["samples"],
            slides=DEMO.slides,
            expression=DEMO.expression,
            bulk=DEMO.bulk,
            hest_bench=DEMO.hest_bench,
        params:
            out=parent_of_first_output,
            seed=config["demo"]["seed"],
            patients=config["demo"]["patients"],
            slides_per_patient=config["demo"]["slides_per_patient"],
            genes=config["demo"]["genes"],
            hest_bench=PLAN.demo_flags,
        resources:
            slurm_extra=refused_retry_after_user_error,
        benchmark:
            "logs/benchmark/demo_cohort/demo_cohort.tsv"
        log:
            "logs/demo_cohort.log",
        conda:
            "../../envs/histofuse.yaml"
        shell:
            "histofuse demo-cohort --out {params.out:q} --seed {params.seed}"
            " --patients {params.patients} --slides-per-patient {params.slides_per_patient}"
            " --genes {params.genes} {params.hest_bench} > {log:q} 2>&1"
