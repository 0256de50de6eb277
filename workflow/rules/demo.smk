# The synthetic demo cohort, generated only when `demo.enabled` is true.
# With `demo.hest_bench` it also writes the first slide of each patient as a HEST-Bench task
# folder (hest-bench/ beside the sheet), its patches cut at the tiling's size and µm/px.
if config["demo"]["enabled"]:

    def demo_hest_bench_outputs():
        from histofuse.demo import demo_hest_bench_ids

        if not config["demo"]["hest_bench"]:
            return []
        folder = os.path.join(os.path.dirname(config["samples"]), "hest-bench")
        ids = demo_hest_bench_ids(config["demo"]["patients"], config["demo"]["slides_per_patient"])
        files = [os.path.join(folder, "patches", f"{s}.h5") for s in ids]
        files += [os.path.join(folder, "adata", f"{s}.h5ad") for s in ids]
        files += [
            os.path.join(folder, "splits", f"{side}_{i}.csv")
            for i in range(config["demo"]["patients"])
            for side in ("train", "test")
        ]
        return files + [os.path.join(folder, f) for f in ("var_50genes.json", "mean_50genes.json")]

    def demo_hest_bench_flags():
        if not config["demo"]["hest_bench"]:
            return ""
        t = config["tiling"]
        return (
            f"--hest-bench --hest-bench-px {round(t['patch_um'] / t['target_mpp'])}"
            f" --hest-bench-mpp {t['target_mpp']}"
        )


    rule demo_cohort:
        output:
            sheet=config["samples"],
            slides=[s for s in SAMPLES["slide"] if s],
            expression=SAMPLES["expression"].tolist(),
            hest_bench=demo_hest_bench_outputs(),
        params:
            out=parent_of_first_output,
            seed=config["demo"]["seed"],
            patients=config["demo"]["patients"],
            slides_per_patient=config["demo"]["slides_per_patient"],
            genes=config["demo"]["genes"],
            hest_bench=demo_hest_bench_flags(),
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
