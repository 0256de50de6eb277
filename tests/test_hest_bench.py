import json
import shutil

import h5py
import numpy as np
import pytest

from histofuse.errors import HistofuseError
from histofuse.samples import load_samples
from histofuse.slides.patches import patch_tiles, read_hest_bench
from histofuse.slides.reader import TileDataset, open_tile_source
from histofuse.slides.tiling import read_tiles


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
    from histofuse.cache.store import open_features
    from histofuse.embed import embed_shard
    from histofuse.slides.tiling import write_tiles

    sid, path = next(iter(small_tiles.items()))
    table, meta = patch_tiles(bench_folder / "patches" / f"{sid}.h5", 56.0, 1.0)
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
        patch_tiles(victim)
