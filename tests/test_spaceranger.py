"""Space Ranger ``outs/`` folders as expression files, on a real generated slide.

The folders are written here in Space Ranger's own layouts (10x's HDF5 matrix or the Matrix
Market folder; ``tissue_positions.csv`` with its header or the older headerless
``tissue_positions_list.csv``) from a demo sample whose spots lie on a Visium hex grid with a
100 µm pitch, on a slide wider than high so that swapped x/y would land off the slide.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import anndata
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.io
import tifffile
from scipy import sparse

from histofuse.errors import HistofuseError

BIN = Path(sys.executable).parent
MPP = 0.5
SPOTS = {"mode": "spots", "patch_um": 56.0, "target_mpp": 0.5}
ANTIBODY = "CD3_TotalSeqA"


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> dict:
    """One demo sample: its slide (1200 × 700 µm at 0.5 µm/px) and its ``.h5ad``."""
    from histofuse.demo import write_demo_cohort

    out = tmp_path_factory.mktemp("demo")
    write_demo_cohort(
        out, seed=1, n_patients=1, slides_per_patient=1, n_genes=30, width_um=1200, height_um=700
    )
    return {"slide": out / "slides/P1-S1.tiff", "adata": anndata.read_h5ad(out / "st/P1-S1.h5ad")}


def _grid_positions(adata: anndata.AnnData, off_tissue: list[str]) -> pd.DataFrame:
    """Every array position of the spots' bounding box, as Space Ranger lists the whole array.

    Spots of the sample keep their centres; the other positions are placed on the same hex grid
    (100 µm pitch: 200 px along a row, 173.2 px between rows at 0.5 µm/px) and are off tissue,
    as are the spots named in ``off_tissue``.
    """
    obs = adata.obs
    spots = [(int(r), int(c)) for r, c in zip(obs["array_row"], obs["array_col"], strict=True)]
    (r0, c0), (x0, y0) = spots[0], adata.obsm["spatial"][0]
    rows = [
        (bc, 0 if bc in off_tissue else 1, r, c, y, x)
        for bc, (r, c), (x, y) in zip(adata.obs_names, spots, adata.obsm["spatial"], strict=True)
    ]
    rs, cs = zip(*spots, strict=True)
    for r in range(min(rs), max(rs) + 1):
        for c in range(min(cs), max(cs) + 1):
            if (r + c) % 2 == (r0 + c0) % 2 and (r, c) not in spots:
                x = x0 + (c - c0) * 50.0 / MPP
                y = y0 + (r - r0) * 100.0 * np.sqrt(3) / 2 / MPP
                rows.append((f"OFF{r:03d}{c:03d}-1", 0, r, c, y, x))
    cols = ["barcode", "in_tissue", "array_row", "array_col"]
    return pd.DataFrame(rows, columns=[*cols, "pxl_row_in_fullres", "pxl_col_in_fullres"])


def _features(adata: anndata.AnnData) -> pd.DataFrame:
    """Ids, symbols (the second gene repeats the first's symbol) and types; one antibody last."""
    names = list(adata.var_names)
    names[1] = names[0]
    ids = [f"ENSG{i:011d}" for i in range(len(names))]
    return pd.DataFrame(
        {
            "id": [*ids, "ADT0001"],
            "name": [*names, ANTIBODY],
            "type": ["Gene Expression"] * len(names) + ["Antibody Capture"],
        }
    )


def _write_h5(path: Path, counts: sparse.csr_matrix, barcodes: list[str], feats: pd.DataFrame):
    """10x's HDF5 layout: a features × barcodes CSC matrix under ``/matrix``."""
    csc = sparse.csc_matrix(counts.T)
    with h5py.File(path, "w") as f:
        m = f.create_group("matrix")
        m["barcodes"] = np.array(barcodes, dtype="S")
        m["data"] = csc.data.astype(np.int32)
        m["indices"] = csc.indices.astype(np.int64)
        m["indptr"] = csc.indptr.astype(np.int64)
        m["shape"] = np.array(csc.shape, dtype=np.int32)
        g = m.create_group("features")
        g["id"] = np.array(feats["id"], dtype="S")
        g["name"] = np.array(feats["name"], dtype="S")
        g["feature_type"] = np.array(feats["type"], dtype="S")
        g["genome"] = np.array(["GRCh38"] * len(feats), dtype="S")
        g["_all_tag_keys"] = np.array([b"genome"])


def _write_mtx(folder: Path, counts: sparse.csr_matrix, barcodes: list[str], feats: pd.DataFrame):
    """10x's Matrix Market folder: features × barcodes ``matrix.mtx.gz`` and two lists."""
    folder.mkdir()
    scipy.io.mmwrite(folder / "matrix.mtx", sparse.coo_matrix(counts.T), field="integer")
    with open(folder / "matrix.mtx", "rb") as src, gzip.open(folder / "matrix.mtx.gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    (folder / "matrix.mtx").unlink()
    with gzip.open(folder / "barcodes.tsv.gz", "wt") as f:
        f.write("".join(f"{b}\n" for b in barcodes))
    with gzip.open(folder / "features.tsv.gz", "wt") as f:
        f.write("".join(f"{i}\t{n}\t{t}\n" for i, n, t in feats.itertuples(index=False)))


def write_outs(root: Path, adata: anndata.AnnData, matrix: str, positions: str) -> Path:
    """A Space Ranger ``outs/`` folder of a demo sample.

    The matrix holds every spot of the sample (the last three marked off tissue) plus an
    antibody feature; ``positions`` is ``new`` (header, float pixels) or ``old`` (headerless,
    whole pixels). ``spot_diameter_fullres`` holds a padded diameter (65 µm at 0.5 µm/px), as
    Space Ranger writes, so that 55 µm ÷ it gives a wrong µm/px.
    """
    outs = root / "outs"
    (outs / "spatial").mkdir(parents=True)
    barcodes = list(adata.obs_names)
    feats = _features(adata)
    antibody = np.arange(len(barcodes))[:, None] % 4
    counts = sparse.hstack([adata.X, sparse.csr_matrix(antibody)]).tocsr()
    if matrix == "h5":
        _write_h5(outs / "filtered_feature_bc_matrix.h5", counts, barcodes, feats)
    else:
        _write_mtx(outs / "filtered_feature_bc_matrix", counts, barcodes, feats)
    table = _grid_positions(adata, off_tissue=barcodes[-3:])
    if positions == "new":
        table.to_csv(outs / "spatial/tissue_positions.csv", index=False)
    else:
        table = table.round({"pxl_row_in_fullres": 0, "pxl_col_in_fullres": 0})
        table = table.astype({"pxl_row_in_fullres": int, "pxl_col_in_fullres": int})
        table.to_csv(outs / "spatial/tissue_positions_list.csv", index=False, header=False)
    scales = {
        "spot_diameter_fullres": 65.0 / MPP,
        "fiducial_diameter_fullres": 97.0 / MPP,
        "tissue_hires_scalef": 0.25,
        "tissue_lowres_scalef": 0.075,
    }
    (outs / "spatial/scalefactors_json.json").write_text(json.dumps(scales))
    return outs


def _slide_with_mpp(demo: dict, path: Path, mpp: float | None) -> Path:
    """A copy of the demo slide whose resolution tags say ``mpp`` (``None``: no unit, no µm/px)."""
    shutil.copy(demo["slide"], path)
    with tifffile.TiffFile(path, mode="r+b") as tif:
        for page in tif.pages:
            if mpp is None:
                page.tags["ResolutionUnit"].overwrite(1)
                continue
            scale = page.shape[1] / tif.pages[0].shape[1]
            ppcm = round(1e4 / mpp * scale)
            page.tags["XResolution"].overwrite((ppcm, 1))
            page.tags["YResolution"].overwrite((ppcm, 1))
    return path


FORMATS = [("h5", "new"), ("mtx", "old")]


@pytest.mark.parametrize(("matrix", "positions"), FORMATS)
def test_counts_barcodes_genes_and_centres(demo, tmp_path, matrix, positions):
    from histofuse.data.expression import read_counts
    from histofuse.data.spaceranger import read_outs
    from histofuse.slides.tiling import read_spots

    adata = demo["adata"]
    outs = write_outs(tmp_path, adata, matrix, positions)
    got = read_outs(outs)
    kept = list(adata.obs_names[:-3])  # the last three are off tissue
    assert list(got.obs_names) == kept
    np.testing.assert_array_equal(got.X.toarray(), adata.X[:-3].toarray())
    names = list(adata.var_names)
    assert list(got.var_names) == [names[0], f"{names[0]}-1", *names[2:]]  # no antibody
    assert list(got.var["gene_ids"]) == [f"ENSG{i:011d}" for i in range(len(names))]
    want_xy = adata.obsm["spatial"][:-3]  # demo: x along the 2400 px width, y along 1400 px
    tol = 1e-6 if positions == "new" else 0.5
    np.testing.assert_allclose(got.obsm["spatial"], want_xy, atol=tol)
    assert want_xy[:, 0].max() > 1400  # x/y swapped would put these below the slide
    barcodes, xy = read_spots(outs)
    assert list(barcodes) == kept and np.allclose(xy, want_xy, atol=tol)
    counts = read_counts(outs, np.array(kept[::-1]), transform="log1p")
    np.testing.assert_array_equal(counts.to_numpy(), adata.X[:-3].toarray()[::-1])


@pytest.mark.parametrize(("matrix", "positions"), FORMATS)
def test_mpp_from_the_spot_pitch_not_the_spot_diameter(demo, tmp_path, matrix, positions):
    from histofuse.data.spaceranger import MPP_SOURCE, pitch_mpp
    from histofuse.slides.mpp import MppLimits
    from histofuse.slides.run import TileJob, tile_one
    from histofuse.slides.spec import TilingSpec

    outs = write_outs(tmp_path, demo["adata"], matrix, positions)
    assert pitch_mpp(outs) == pytest.approx(MPP, rel=0.01)
    diameter = json.loads((outs / "spatial/scalefactors_json.json").read_text())
    from_diameter = 55.0 / diameter["spot_diameter_fullres"]
    assert abs(from_diameter / MPP - 1) > 0.1  # the trap: 15 % off
    slide = _slide_with_mpp(demo, tmp_path / "bare.tiff", None)
    job = TileJob("S1", str(slide), tmp_path / "S1.parquet", expression=str(outs))
    tile_one(job, TilingSpec.from_config(SPOTS), "stop", MppLimits.from_config({}))
    stats = json.loads(job.stats_out.read_text())
    assert stats["mpp_source"] == MPP_SOURCE and stats["mpp_slide"] is None
    assert stats["mpp_x"] == pytest.approx(MPP, rel=0.01) and stats["warnings"] == []
    assert stats["mpp_spot_pitch"] == stats["mpp_x"]


def test_slide_metadata_wins_and_a_disagreeing_pitch_is_recorded(demo, tmp_path):
    from histofuse.slides.mpp import MppLimits
    from histofuse.slides.run import TileJob, tile_one
    from histofuse.slides.spec import TilingSpec

    outs = write_outs(tmp_path, demo["adata"], "h5", "new")
    spec, limits = TilingSpec.from_config(SPOTS), MppLimits.from_config({})
    for name, mpp, n_warnings in (("agree", MPP, 0), ("off", 0.4, 1)):
        slide = _slide_with_mpp(demo, tmp_path / f"{name}.tiff", mpp)
        job = TileJob(name, str(slide), tmp_path / f"{name}.parquet", expression=str(outs))
        tile_one(job, spec, "stop", limits)
        stats = json.loads(job.stats_out.read_text())
        assert stats["mpp_source"] == "openslide.mpp"  # the slide's own
        assert stats["mpp_x"] == pytest.approx(mpp, rel=1e-3)
        assert stats["mpp_spot_pitch"] == pytest.approx(MPP, rel=0.01)
        assert len(stats["warnings"]) == n_warnings
    assert "spot pitch" in stats["warnings"][0] and "by 20%" in stats["warnings"][0]


def test_a_default_72_dpi_tag_gives_way_to_the_spot_pitch(demo, tmp_path):
    from histofuse.slides.mpp import MppLimits
    from histofuse.slides.run import TileJob, tile_one
    from histofuse.slides.spec import TilingSpec

    outs = write_outs(tmp_path, demo["adata"], "h5", "new")
    slide = shutil.copy(demo["slide"], tmp_path / "export.tiff")
    with tifffile.TiffFile(slide, mode="r+b") as tif:  # 28.35 px/cm: 72 dpi, no real µm/px
        tif.pages[0].tags["XResolution"].overwrite((2835, 100))
        tif.pages[0].tags["YResolution"].overwrite((2835, 100))
    job = TileJob("S1", str(slide), tmp_path / "S1.parquet", expression=str(outs))
    tile_one(job, TilingSpec.from_config(SPOTS), "stop", MppLimits.from_config({}))
    stats = json.loads(job.stats_out.read_text())
    assert stats["mpp_source"] == "spaceranger-spot-pitch" and stats["mpp_slide"] is None
    assert stats["mpp_x"] == pytest.approx(MPP, rel=0.01) and stats["warnings"] == []


def test_sheet_row_pointing_at_outs_tiles_through_the_cli(demo, tmp_path):
    from histofuse.slides.tiling import read_tiles

    outs = write_outs(tmp_path / "P1-S1", demo["adata"], "h5", "new")
    _slide_with_mpp(demo, tmp_path / "P1-S1.tiff", None)  # no µm/px: the spot pitch gives it
    sheet = tmp_path / "samples.tsv"
    sheet.write_text(
        "sample_id\tpatient_id\tslide\texpression\nP1-S1\tP1\tP1-S1.tiff\tP1-S1/outs/\n"
    )
    cmd = [str(BIN / "histofuse"), "tile", "--sheet", str(sheet), "--sample", "P1-S1"]
    cmd += ["--out-dir", str(tmp_path / "tiles"), "--tiling", json.dumps(SPOTS)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    table, meta = read_tiles(tmp_path / "tiles/P1-S1.parquet")
    adata = demo["adata"]
    assert list(table["barcode"]) == list(adata.obs_names[:-3])
    np.testing.assert_allclose(table[["x", "y"]].to_numpy(), adata.obsm["spatial"][:-3])
    assert meta["mpp_source"] == "spaceranger-spot-pitch"
    assert meta["mpp_x"] == pytest.approx(MPP, rel=0.01)
    assert outs.is_dir()


def test_sheet_names_a_broken_outs_folder(demo, tmp_path):
    from histofuse.samples import load_samples

    outs = write_outs(tmp_path / "P1-S1", demo["adata"], "h5", "new")
    (outs / "spatial/tissue_positions.csv").unlink()
    sheet = tmp_path / "samples.tsv"
    sheet.write_text("sample_id\tpatient_id\tslide\texpression\nP1-S1\tP1\ts.tiff\tP1-S1/outs\n")
    shutil.copy(demo["slide"], tmp_path / "s.tiff")
    with pytest.raises(
        HistofuseError,
        match=r"row 2 \(P1-S1\): Space Ranger folder .*outs has no "
        r"spatial/tissue_positions.csv or spatial/tissue_positions_list.csv",
    ):
        load_samples(sheet)
    sheet.write_text("sample_id\tpatient_id\tslide\texpression\nP1-S1\tP1\ts.tiff\tP1-S1/x.csv\n")
    with pytest.raises(HistofuseError, match=r"`expression` = .*x.csv' is invalid"):
        load_samples(sheet)


def test_matrix_barcodes_without_a_position_are_refused(demo, tmp_path):
    from histofuse.data.spaceranger import read_outs

    outs = write_outs(tmp_path, demo["adata"], "h5", "new")
    positions = outs / "spatial/tissue_positions.csv"
    table = pd.read_csv(positions)
    table[table["barcode"] != demo["adata"].obs_names[0]].to_csv(positions, index=False)
    with pytest.raises(HistofuseError, match="1 barcodes of the matrix are not in tissue_posit"):
        read_outs(outs)


def test_comma_separated_sheet_is_named(tmp_path):
    from histofuse.samples import load_samples

    sheet = tmp_path / "samples.tsv"
    sheet.write_text("sample_id,patient_id,slide\nS1,P1,s.tiff\n")
    with pytest.raises(HistofuseError) as err:
        load_samples(sheet, check_files=False)
    assert str(err.value) == (
        f"sample sheet {sheet} must be tab-separated (it looks comma-separated); save it with "
        "tabs between the columns"
    )


@pytest.mark.slow
def test_a_single_section_space_ranger_study_runs_through_snakemake(demo, tmp_path):
    """The user's flow: a sheet row naming `outs/`, one section, `spatial-block` folds, a report."""
    import yaml

    repo = Path(__file__).resolve().parents[1]
    study = tmp_path / "my study"
    write_outs(study / "P1-S1", demo["adata"], "h5", "new")
    _slide_with_mpp(demo, study / "P1-S1.tiff", None)
    (study / "samples.tsv").write_text(
        "sample_id\tpatient_id\tslide\texpression\nP1-S1\tP1\tP1-S1.tiff\tP1-S1/outs\n"
    )
    config = {
        "samples": "samples.tsv",
        "tiling": {"patch_um": 56, "target_mpp": 1.0},
        "encoders": ["tiny-vit"],
        "embed": {"num_workers": 0, "threads": 1, "gpu": 0},
        "tasks": {
            "visium": {
                "genes": {"top_k": 10},
                "split": {"scheme": "spatial-block", "block_um": 300, "n_folds": 2},
            }
        },
        "heads": {"ridge": {}},
        "report": {"bootstrap": 0},
    }
    (study / "config.yaml").write_text(yaml.safe_dump(config))
    cmd = [str(BIN / "snakemake"), "-s", str(repo / "Snakefile"), "--directory", str(study)]
    cmd += ["--configfile", str(study / "config.yaml"), "--cores", "2"]
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    stats = json.loads((study / "results/tiles/P1-S1.json").read_text())
    assert stats["mpp_source"] == "spaceranger-spot-pitch"
    summary = pd.read_csv(study / "results/report/summary.csv")
    assert set(summary["task"]) == {"visium"} and len(summary) >= 1
    metrics = pd.read_parquet(next((study / "results/metrics/visium").rglob("*.parquet")))
    assert np.isfinite(metrics["pearson"]).any()
