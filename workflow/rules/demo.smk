# The synthetic demo cohort, generated only when `demo.enabled` is true.
if config["demo"]["enabled"]:

    rule demo_cohort:
        output:
            sheet=config["samples"],
            slides=SAMPLES["slide"].tolist(),
            expression=SAMPLES["expression"].tolist(),
            bulk=os.path.join(os.path.dirname(config["samples"]), "bulk.csv"),
        params:
            out=parent_of_first_output,
            seed=config["demo"]["seed"],
            patients=config["demo"]["patients"],
            slides_per_patient=config["demo"]["slides_per_patient"],
            genes=config["demo"]["genes"],
        benchmark:
            "logs/benchmark/demo_cohort/demo_cohort.tsv"
        log:
            "logs/demo_cohort.log",
        conda:
            "../../envs/histofuse.yaml"
        shell:
            "histofuse demo-cohort --out {params.out:q} --seed {params.seed}"
            " --patients {params.patients} --slides-per-patient {params.slides_per_patient}"
            " --genes {params.genes} > {log:q} 2>&1"
