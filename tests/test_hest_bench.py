import json
import shutil

import h5py
import numpy as np
import pytest

from histofuse import settings
from histofuse.errors import HistofuseError
from histofuse.samples import load_samples
from histofuse.slides.patches import patch_tiles, read_hest_bench
from histofuse.slides.reader import TileDataset, open_tile_source
from histofuse.slides.spec import TilingSpec
from histofuse.slides.tiling import read_tiles

SPEC = TilingSpec.from_config({"patch_um": 56.0, "target_mpp": 1.0})


@pytest.fixture(scope="module")
def bench_folder(small_cohort, small_tiles, tmp_path_factory):
    """The small cohort in the HEST-Bench task layout, patches cut by the tile reader."""
    sheet = load_samples(small_cohort)
    root = tmp_path_factory.mktemp("hestbench") / "TASK"
    for sub in ("splits", "patches", "adata"):
        (root / sub).mkdir(parents=True)
    for sid, path in small_tiles.items():
        table, meta = read_tiles(path)
        ds = TileDataset(table, meta)
        with h5py.File(root / "patches" / f"{sid}.h5", "w") as f:
            f["img"] = np.stack([ds[i] for i in range(len(ds))])
            f["barcode"] = np.array([b.encode() for b in table["barcode"]])[:, None]
            f["coords"] = table[["x", "y"]].to_numpy()
        shutil.copy(sheet.at[sid, "expression"], root / "adata" / f"{sid}.h5ad")
    patients = sorted(set(sheet["patient_id"]))
    for i, pat in enumerate(patients):
        for name, ids in (
            ("test", sheet.index[sheet["patient_id"] == pat]),
            ("train", sheet.index[sheet["patient_id"] != pat]),
        ):
            lines = ["sample_id,patches_path,expr_path"]
            lines += [f"{s},patches/{s}.h5,adata/{s}.h5ad" for s in ids]
            (root / "splits" / f"{name}_{i}.csv").write_text("\n".join(lines) + "\n")
    (root / "var_50genes.json").write_text(json.dumps({"genes": ["G1", "G2"]}))
    return root


def test_hest_bench_folder_gives_samples_splits_and_genes(bench_folder, small_cohort):
    sheet = load_samples(small_cohort)
    bench = read_hest_bench(bench_folder)
    assert bench["genes"] == ["G1", "G2"]
    assert sorted(bench["samples"].index) == sorted(sheet.index)
    assert len(bench["folds"]) == 2
    for train, test in bench["folds"]:
        assert not set(train) & set(test) and sorted(train + test) == sorted(sheet.index)
    # patient-level folds: the two slides of a patient share a group
    groups = bench["samples"]["patient_id"]
    assert groups.nunique() == 2
    for _, test in bench["folds"]:
        assert groups[test].nunique() == 1


def test_precut_patches_are_a_tile_source_for_embedding(bench_folder, small_tiles, tmp_path):
    from histofuse.cache import open_features
    from histofuse.embed import embed_shard
    from histofuse.slides.tiling import write_tiles

    sid, path = next(iter(small_tiles.items()))
    table, meta = patch_tiles(bench_folder / "patches" / f"{sid}.h5", SPEC)
    ref_table, ref_meta = read_tiles(path)
    assert table["barcode"].tolist() == ref_table["barcode"].tolist()
    ds, ref = open_tile_source(table, meta), open_tile_source(ref_table, ref_meta)
    np.testing.assert_array_equal(ds[3], ref[3])
    write_tiles(table, {**meta, "sample": sid}, tmp_path / f"{sid}.parquet")
    prov = embed_shard([tmp_path / f"{sid}.parquet"], "tiny-cnn", tmp_path / "s.zarr")
    assert prov["n_tiles"] == len(table)
    feats = open_features([tmp_path / "s.zarr"])
    assert feats.features.shape[0] == len(table)
    assert feats.index["barcode"].tolist() == table["barcode"].tolist()


def test_hest_bench_errors_name_the_file(bench_folder, tmp_path):
    broken = tmp_path / "B"
    shutil.copytree(bench_folder, broken)
    (broken / "var_50genes.json").write_text("[]")
    with pytest.raises(HistofuseError, match="var_50genes.json is missing or has no `genes`"):
        read_hest_bench(broken)
    shutil.copy(bench_folder / "var_50genes.json", broken / "var_50genes.json")
    victim = next((broken / "patches").glob("*.h5"))
    victim.unlink()
    with pytest.raises(HistofuseError, match=f"{victim.name} is missing"):
        read_hest_bench(broken)
    with pytest.raises(HistofuseError, match="does not exist"):
        patch_tiles(victim, SPEC)


@pytest.fixture(scope="module")
def demo_bench(small_cohort, tmp_path_factory):
    """The demo generator's HEST-Bench folder of the small cohort (56 px at 1 µm/px)."""
    from histofuse.demo import write_demo_hest_bench

    out = tmp_path_factory.mktemp("demobench") / "DEMO"
    return write_demo_hest_bench(small_cohort.parent, out, patch_px=56, patch_mpp=1.0, n_genes=8)


def test_demo_generator_writes_the_hest_bench_layout(demo_bench, small_cohort, small_tiles):
    import anndata
    import pandas as pd

    sheet = load_samples(small_cohort)
    bench = read_hest_bench(demo_bench)
    ids = ["P1-S1", "P2-S1"]  # the first slide of each patient
    assert sorted(bench["samples"].index) == ids
    # one patient per test fold, the others train (as HEST's patient-level splits)
    assert sorted(bench["folds"]) == [(["P1-S1"], ["P2-S1"]), (["P2-S1"], ["P1-S1"])]
    for csv in (demo_bench / "splits").glob("*.csv"):
        assert pd.read_csv(csv).columns.tolist() == ["sample_id", "patches_path", "expr_path"]
    logs = []
    for sid in ids:
        with h5py.File(demo_bench / "patches" / f"{sid}.h5", "r") as f:
            img, barcode, coords = f["img"][:], f["barcode"][:], f["coords"][:]
        adata = anndata.read_h5ad(demo_bench / "adata" / f"{sid}.h5ad")
        # patches: HEST's datasets, one per spot, centred on the spot, cut by the tile reader
        assert img.dtype == np.uint8 and img.shape[1:] == (56, 56, 3)
        assert [b.decode() for b in barcode[:, 0]] == adata.obs_names.tolist()
        np.testing.assert_allclose(coords, adata.obsm["spatial"])
        table, meta = read_tiles(small_tiles[sid])
        ds = TileDataset(table, meta)
        for i in (0, len(ds) // 2, len(ds) - 1):
            np.testing.assert_array_equal(img[i], ds[i])
        x = adata.X.toarray()
        assert x.sum() > 0 and adata.n_obs == len(table)
        logs.append(np.log1p(x))
        orig = anndata.read_h5ad(sheet.at[sid, "expression"])
        assert (orig.X != adata.X).nnz == 0
    # var_50genes: the most variable genes of log1p counts over all spots of the task
    log = np.concatenate(logs)
    var = log.var(axis=0, ddof=1)
    expected = [adata.var_names[i] for i in np.lexsort((adata.var_names, -var))[:8]]
    assert bench["genes"] == expected
    assert len(json.loads((demo_bench / "mean_50genes.json").read_text())["genes"]) == 8


def test_hest_bench_task_embeds_the_patches_and_fits_on_the_official_splits(demo_bench, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    import pandas as pd
    from PIL import Image

    from histofuse.embed import embed_shard
    from histofuse.fit import fit_task
    from histofuse.hest_bench import bench_samples

    table = bench_samples("T", demo_bench)
    assert table.index.tolist() == ["T.P1-S1", "T.P2-S1"]
    assert (table["slide"] == "").all() and table["patches"].str.endswith(".h5").all()
    exe = Path(sys.executable).parent / "histofuse"
    tiles = []
    for sid, row in table.iterrows():
        out = tmp_path / "tiles" / f"{sid}.parquet"
        r = subprocess.run(
            [str(exe), "tile", "--sample", sid, "--patches", row["patches"], "--tiling",
             '{"patch_um": 56, "target_mpp": 1}', "--out", str(out)],
            capture_output=True, text=True,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        tiles.append(out)
        stats = json.loads(out.with_suffix(".json").read_text())
        assert stats["mpp_source"] == "pre-cut patches" and stats["effective_mpp"] == 1.0
        assert stats["patches"] == row["patches"] and stats["stored_px"] == 56
        with Image.open(out.with_suffix(".qc.png")) as qc:
            assert np.asarray(qc.convert("L")).std() > 5  # patches drawn, not a blank sheet
    embed_shard(tiles, "tiny-cnn", tmp_path / "s.zarr")
    task = settings.load(
        settings.Task,
        "tasks",
        {"hest_bench": str(demo_bench), "split": {"scheme": "patient-kfold"}},
    )
    metrics = fit_task(
        "T", task, "unused.tsv", [tmp_path / "s.zarr"], "tiny-cnn", "hest", {"cap_components": True},
        tmp_path / "m.parquet", tmp_path / "p.parquet",
    )  # fmt: skip
    genes = json.loads((demo_bench / "var_50genes.json").read_text())["genes"]
    assert sorted(set(metrics["gene"])) == sorted(genes)
    pred = pd.read_parquet(tmp_path / "p.parquet")
    # the official folds: fold i tests the samples of splits/test_i.csv
    for fold in (0, 1):
        test_ids = pd.read_csv(demo_bench / "splits" / f"test_{fold}.csv")["sample_id"]
        assert sorted(pred[pred["fold"] == fold]["sample"].unique()) == [f"T.{s}" for s in test_ids]
    pooled = metrics[metrics["protocol"] == "hest-pooled"]
    assert pooled["pearson"].notna().all() and pooled["fold"].nunique() == 2


def _bench_config(folder, **task):
    from pathlib import Path

    import yaml

    from histofuse.config import load_schema, validate_config

    repo = Path(__file__).resolve().parents[1]
    cfg = yaml.safe_load((repo / "config/config.yaml").read_text())
    cfg["tasks"]["demo-bench"] = {"hest_bench": str(folder), **task}
    return validate_config(cfg, load_schema())


def test_plan_adds_a_hest_bench_folder_as_its_own_samples_and_shard(demo_bench, tmp_path):
    from histofuse.plan import Plan

    plan = Plan.from_config(_bench_config(demo_bench, heads=["hest"]))
    bench = plan.task_samples("demo-bench")
    assert bench == ["demo-bench.P1-S1", "demo-bench.P2-S1"]
    assert plan.samples.loc[bench, "patches"].tolist() == [
        str((demo_bench / "patches" / f"{s}.h5").resolve()) for s in ("P1-S1", "P2-S1")
    ]
    # the sheet's task never picks the pre-cut patches up, and they get a shard of their own
    assert not set(bench) & set(plan.task_samples("demo-spots"))
    assert plan.shards_of(bench) == ["0001"] and plan.shards["0001"] == bench
    # errors name the task key
    with pytest.raises(HistofuseError, match=r"tasks.demo-bench.hest_bench`: \S*nowhere"):
        Plan.from_config(_bench_config(tmp_path / "nowhere"))
    with pytest.raises(HistofuseError, match="`samples` and `hest_bench` exclude each other"):
        Plan.from_config(_bench_config(demo_bench, samples=["P1-S1"]))
    with pytest.raises(HistofuseError, match=r"tasks.demo-bench.heads` names \['ridge'\]"):
        Plan.from_config(_bench_config(demo_bench, heads=["ridge"]))


def test_shard_tiling_cuts_sheet_slides_and_hest_bench_patches_in_one_job(
    demo_bench, small_cohort, tmp_path
):
    import subprocess
    import sys
    from pathlib import Path

    exe = Path(sys.executable).parent / "histofuse"
    out = tmp_path / "shard"
    r = subprocess.run(
        [str(exe), "tile", "--sheet", str(small_cohort), "--sample", "P1-S1", "--sample",
         "T.P2-S1", "--hest-bench", f"T={demo_bench}", "--tiling", '{"patch_um": 56, "target_mpp": 1}',
         "--out-dir", str(out)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        f"{s}.{ext}" for s in ("P1-S1", "T.P2-S1") for ext in ("json", "parquet", "qc.png")
    ]
    patch_table, patch_meta = read_tiles(out / "T.P2-S1.parquet")
    slide_table, slide_meta = read_tiles(out / "P1-S1.parquet")
    assert len(patch_table) > 0 and len(slide_table) > 0
    assert slide_meta["mpp_source"] == "override" and "source" not in slide_meta  # sheet mpp
    assert patch_meta["source"] == "h5" and patch_meta["patches"].endswith("P2-S1.h5")
    r = subprocess.run(
        [str(exe), "tile", "--sheet", str(small_cohort), "--sample", "T.P2-S1",
         "--hest-bench", "T", "--out-dir", str(out)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert r.returncode == 2 and "--hest-bench 'T' must be TASK=FOLDER" in r.stderr
