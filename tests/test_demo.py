"""The synthetic demo cohort: real slides, Visium-like spots, expression that follows the image."""

from __future__ import annotations

import csv
import filecmp
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from histofuse.demo import write_demo_cohort
from histofuse.demo.layout import sample_ids

openslide = pytest.importorskip("openslide")
ad = pytest.importorskip("anndata")

MPP = 0.5
SPOT_PX = 55.0 / MPP
PITCH_PX = 100.0 / MPP


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """The default cohort (3 patients x 2 slides of 2000 x 1500 µm at 0.5 µm/px)."""
    out = tmp_path_factory.mktemp("demo")
    return write_demo_cohort(out, seed=0)


@pytest.fixture(scope="module")
def sheet(cohort) -> list[dict[str, str]]:
    with open(cohort, newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


@pytest.fixture(scope="module")
def spots(cohort, sheet) -> dict[str, ad.AnnData]:
    return {row["sample_id"]: ad.read_h5ad(cohort.parent / row["expression"]) for row in sheet}


def rgb(slide, location, level, size) -> np.ndarray:
    return np.asarray(slide.read_region(location, level, size).convert("RGB"), dtype=np.float64)


def saturation(img: np.ndarray) -> np.ndarray:
    hi, lo = img.max(axis=-1), img.min(axis=-1)
    return (hi - lo) / np.maximum(hi, 1.0)


def nuclear_fraction(patch: np.ndarray) -> float:
    """Fraction of dark, bluish (haematoxylin) pixels."""
    r, g, b = patch[..., 0], patch[..., 1], patch[..., 2]
    return float(((r + g + b < 3 * 160) & (b > g) & (b > r - 10)).mean())


# --- ids and the sample sheet -----------------------------------------------------------------


def test_sample_ids():
    assert sample_ids() == ["P1-S1", "P1-S2", "P2-S1", "P2-S2", "P3-S1", "P3-S2"]
    assert sample_ids(2, 3) == ["P1-S1", "P1-S2", "P1-S3", "P2-S1", "P2-S2", "P2-S3"]
    assert sample_ids(1, 1) == ["P1-S1"]


def test_import_is_cheap():
    code = (
        "import sys, histofuse.demo; "
        "print(sorted(m for m in ('numpy', 'anndata', 'skimage', 'tifffile', 'pandas', 'scipy')"
        " if m in sys.modules))"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "[]"


def test_sample_sheet(cohort, sheet):
    assert cohort.name == "samples.tsv"
    with open(cohort, newline="") as fh:
        header = fh.readline().rstrip("\n").split("\t")
    assert header == ["sample_id", "patient_id", "slide", "expression", "mpp"]
    ids = [row["sample_id"] for row in sheet]
    assert ids == sample_ids()
    assert len(ids) >= 6
    assert len({row["patient_id"] for row in sheet}) >= 3
    for row in sheet:
        assert row["patient_id"] == row["sample_id"].split("-")[0]
        assert row["slide"] == f"slides/{row['sample_id']}.tiff"
        assert row["expression"] == f"st/{row['sample_id']}.h5ad"
        assert not Path(row["slide"]).is_absolute()
        assert (cohort.parent / row["slide"]).is_file()
        assert (cohort.parent / row["expression"]).is_file()
        assert float(row["mpp"]) == MPP


def test_marker_bulk_and_no_leftovers(cohort, sheet, spots):
    out = cohort.parent
    meta = json.loads((out / "cohort.json").read_text())
    assert meta["seed"] == 0 and meta["n_patients"] == 3 and meta["slides_per_patient"] == 2
    assert meta["mpp"] == MPP and meta["n_genes"] == 120
    assert meta["width_px"] == 4000 and meta["height_px"] == 3000
    assert meta["generator"].startswith("histofuse.demo/")
    # The completion marker is written last.
    newest = max(p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file())
    assert (out / "cohort.json").stat().st_mtime_ns == newest
    assert not [p for p in out.rglob(".*")], "temporary files left behind"

    with open(out / "bulk.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    genes = list(spots["P1-S1"].var_names)
    assert rows[0] == ["sample_id", *genes]
    assert [r[0] for r in rows[1:]] == [row["sample_id"] for row in sheet]
    bulk = np.array([[float(v) for v in r[1:]] for r in rows[1:]])
    assert (bulk >= 0).all() and np.isfinite(bulk).all()
    # Bulk follows the spots: per-slide totals correlate with the summed spot counts.
    for i, row in enumerate(sheet):
        summed = np.asarray(spots[row["sample_id"]].X.sum(axis=0)).ravel()
        assert bulk[i].sum() > summed.sum()
        assert np.corrcoef(np.log1p(bulk[i]), np.log1p(summed))[0, 1] > 0.95
    # ... and differs between slides beyond a global scale.
    shares = bulk / bulk.sum(axis=1, keepdims=True)
    assert np.abs(np.log(shares[0] + 1e-9) - np.log(shares[-1] + 1e-9)).max() > 0.3


# --- slides ------------------------------------------------------------------------------------


def test_slides_open_as_generic_tiff(cohort, sheet):
    for row in sheet:
        with openslide.OpenSlide(cohort.parent / row["slide"]) as slide:
            props = slide.properties
            assert props["openslide.vendor"] == "generic-tiff"
            assert slide.level_count >= 3
            assert slide.dimensions == (4000, 3000)
            assert float(props["openslide.mpp-x"]) == MPP
            assert float(props["openslide.mpp-y"]) == MPP
            assert props["tiff.ResolutionUnit"] == "centimeter"
            assert slide.level_downsamples[1] == pytest.approx(4.0, rel=0.01)
            assert slide.level_downsamples[2] == pytest.approx(16.0, rel=0.01)
            assert int(props["openslide.level[0].tile-width"]) == 256
            assert int(props["openslide.level[0].tile-height"]) == 256


def test_tissue_and_background(cohort, sheet, spots):
    for row in sheet:
        with openslide.OpenSlide(cohort.parent / row["slide"]) as slide:
            low = rgb(slide, (0, 0), 1, slide.level_dimensions[1])
            bright, sat = low.mean(axis=-1), saturation(low)
            background = (bright > 225) & (sat < 0.08)
            tissue = (bright < 215) | (sat > 0.15)
            assert 0.25 < background.mean() < 0.55
            assert 0.45 < tissue.mean() < 0.75

            # Spot centres lie on tissue: pink/purple (G lowest), saturated, darker than glass
            # (a few may fall into a gland lumen or a vessel).
            ok = []
            for x, y in spots[row["sample_id"]].obsm["spatial"][::3]:
                patch = rgb(slide, (int(x) - 32, int(y) - 32), 0, (64, 64))
                r, g, b = patch.reshape(-1, 3).mean(axis=0)
                assert patch.mean() < 236
                ok.append(g < r - 15 and g < b - 5 and saturation(patch).mean() > 0.15)
            assert np.mean(ok) > 0.9

            # Background at level 0 (found at level 2) is near-white glass with a little noise.
            lowest = rgb(slide, (0, 0), 2, slide.level_dimensions[2])
            white = (lowest.mean(axis=-1) > 232) & (saturation(lowest) < 0.05)
            pad = np.zeros_like(white)
            pad[4:-4, 4:-4] = True
            ys, xs = np.nonzero(white & pad & np.roll(white, 3, 0) & np.roll(white, -3, 1))
            assert ys.size, "no background found"
            scale = slide.level_downsamples[2]
            y0, x0 = int(ys[ys.size // 2] * scale), int(xs[xs.size // 2] * scale)
            patch = rgb(slide, (x0, y0), 0, (48, 48))
            assert 232 < patch.mean() < 250
            assert saturation(patch).mean() < 0.05
            assert 0.5 < patch.std() < 8


# --- spots -------------------------------------------------------------------------------------


def test_spot_tables(spots):
    from scipy.spatial import cKDTree

    all_genes = None
    for sample_id, adata in spots.items():
        x = adata.X.toarray() if hasattr(adata.X, "toarray") else np.asarray(adata.X)
        assert np.issubdtype(x.dtype, np.integer)
        assert (x >= 0).all()
        assert adata.n_vars >= 100
        assert 50 <= adata.n_obs <= 300, sample_id
        assert adata.var_names.is_unique
        assert adata.obs_names.is_unique
        assert all(re.fullmatch(r"[ACGT]{16}-1", b) for b in adata.obs_names)
        assert set(adata.obs.columns) >= {"array_row", "array_col", "in_tissue"}
        assert (adata.obs["in_tissue"] == 1).all()
        assert ((adata.obs["array_row"] % 2) == (adata.obs["array_col"] % 2)).all()
        zeros = (x == 0).mean()
        assert 0.05 < zeros < 0.9
        # Overdispersed counts with varied means across genes.
        mean, var = x.mean(axis=0), x.var(axis=0)
        high = mean > 5
        assert high.sum() >= 5 and (var[high] > 1.5 * mean[high]).mean() > 0.8
        assert mean.max() / max(mean.min(), 1e-3) > 100

        xy = adata.obsm["spatial"]
        assert xy.dtype == np.float64 and xy.shape == (adata.n_obs, 2)
        assert (xy[:, 0] > SPOT_PX / 2).all() and (xy[:, 0] < 4000 - SPOT_PX / 2).all()
        assert (xy[:, 1] > SPOT_PX / 2).all() and (xy[:, 1] < 3000 - SPOT_PX / 2).all()
        nearest = cKDTree(xy).query(xy, k=2)[0][:, 1]
        assert nearest.min() > PITCH_PX - 1.0
        # (a spot on an isolated crumb of tissue may have no neighbour at 100 µm)
        assert (np.abs(nearest - PITCH_PX) < 1.0).mean() > 0.97
        # x grows with array_col, y with array_row (Visium layout, 100 µm pitch).
        col_step = np.polyfit(adata.obs["array_col"], xy[:, 0], 1)[0]
        row_step = np.polyfit(adata.obs["array_row"], xy[:, 1], 1)[0]
        assert col_step == pytest.approx(PITCH_PX / 2, abs=0.01)
        assert row_step == pytest.approx(PITCH_PX * np.sqrt(3) / 2, abs=0.01)
        assert adata.uns["spatial_meta"]["spot_diameter_um"] == 55.0
        assert adata.uns["spatial_meta"]["spot_spacing_um"] == 100.0
        assert adata.uns["spatial_meta"]["mpp"] == MPP
        if all_genes is None:
            all_genes = list(adata.var_names)
        assert list(adata.var_names) == all_genes
    assert {"EPCAM", "PTPRC", "COL1A1", "MKI67"} <= set(all_genes)


def test_expression_follows_the_image(cohort, sheet, spots):
    """A crude image statistic (nuclear pixel fraction per spot) predicts many genes."""
    stat, logx, slide_of = [], [], []
    r = int(SPOT_PX / 2)
    for i, row in enumerate(sheet):
        adata = spots[row["sample_id"]]
        with openslide.OpenSlide(cohort.parent / row["slide"]) as slide:
            for x, y in adata.obsm["spatial"]:
                stat.append(nuclear_fraction(rgb(slide, (int(x) - r, int(y) - r), 0, (2 * r,) * 2)))
        logx.append(np.log1p(adata.X.toarray()))
        slide_of.append(np.full(adata.n_obs, i))
    stat = np.asarray(stat)
    logx = np.concatenate(logx)
    slide_of = np.concatenate(slide_of)
    assert stat.std() > 0.02

    def corr(s: np.ndarray, m: np.ndarray) -> np.ndarray:
        s = (s - s.mean()) / s.std()
        sd = m.std(axis=0)
        return np.where(sd > 0, ((m - m.mean(axis=0)) * s[:, None]).mean(axis=0) / sd, 0.0)

    pooled = corr(stat, logx)
    assert (np.abs(pooled) > 0.3).sum() >= 5

    # Not only a slide-level effect: it holds within slides too.
    def centred(a: np.ndarray) -> np.ndarray:
        out = a.astype(np.float64).copy()
        for i in np.unique(slide_of):
            out[slide_of == i] -= out[slide_of == i].mean(axis=0)
        return out

    within = corr(centred(stat), centred(logx))
    assert (np.abs(within) > 0.3).sum() >= 5
    # Some genes are (nearly) pure noise.
    assert (np.abs(pooled) < 0.1).sum() >= 3
    # A shuffled control shows nothing.
    shuffled = corr(np.random.default_rng(0).permutation(stat), logx)
    assert np.abs(shuffled).max() < 0.2


# --- determinism, other parameters, bad arguments -----------------------------------------------


def small(out: Path, seed: int, **kw) -> Path:
    args = {"n_patients": 1, "slides_per_patient": 1, "width_um": 700.0, "height_um": 600.0}
    return write_demo_cohort(out, seed=seed, **{**args, **kw})


def test_deterministic_per_seed(tmp_path):
    a, b, c = small(tmp_path / "a", 7), small(tmp_path / "b", 7), small(tmp_path / "c", 8)
    sid = "P1-S1"
    xa, xb, xc = (ad.read_h5ad(p.parent / "st" / f"{sid}.h5ad") for p in (a, b, c))
    assert np.array_equal(xa.X.toarray(), xb.X.toarray())
    assert list(xa.obs_names) == list(xb.obs_names)
    assert np.array_equal(xa.obsm["spatial"], xb.obsm["spatial"])
    assert filecmp.cmp(
        a.parent / "slides" / f"{sid}.tiff", b.parent / "slides" / f"{sid}.tiff", shallow=False
    )
    assert filecmp.cmp(a.parent / "bulk.csv", b.parent / "bulk.csv", shallow=False)
    with (
        openslide.OpenSlide(a.parent / "slides" / f"{sid}.tiff") as sa,
        openslide.OpenSlide(c.parent / "slides" / f"{sid}.tiff") as sc,
    ):
        pa = rgb(sa, (300, 300), 0, (512, 512))
        pc = rgb(sc, (300, 300), 0, (512, 512))
    assert not np.array_equal(pa, pc)
    assert xa.shape != xc.shape or not np.array_equal(xa.X.toarray(), xc.X.toarray())


def test_other_mpp_and_small_slides(tmp_path):
    sheet = small(tmp_path, 1, mpp=1.0, n_genes=12)
    with openslide.OpenSlide(sheet.parent / "slides" / "P1-S1.tiff") as slide:
        assert slide.dimensions == (700, 600)
        assert slide.level_count >= 3
        assert float(slide.properties["openslide.mpp-x"]) == 1.0
    adata = ad.read_h5ad(sheet.parent / "st" / "P1-S1.h5ad")
    assert adata.n_vars == 12 and adata.n_obs >= 5
    assert adata.uns["spatial_meta"]["mpp"] == 1.0
    x = adata.obsm["spatial"][:, 0]
    steps = np.diff(np.unique(np.round(x, 6)))
    assert steps.min() == pytest.approx(50.0)  # half the 100 µm pitch, in 1 µm pixels


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"n_patients": 0}, "n_patients"),
        ({"n_patients": 1.5}, "n_patients"),
        ({"slides_per_patient": 0}, "slides_per_patient"),
        ({"n_genes": 0}, "n_genes"),
        ({"mpp": 0.0}, "mpp"),
        ({"mpp": -0.5}, "mpp"),
        ({"mpp": float("nan")}, "mpp"),
        ({"width_um": 100.0}, "width_um"),
        ({"height_um": 50.0}, "height_um"),
        ({"seed": -1}, "seed"),
        ({"mpp": 0.05, "width_um": 10000.0, "height_um": 10000.0}, "mpp"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, name):
    with pytest.raises(ValueError, match=name):
        write_demo_cohort(tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_bad_ids_arguments():
    with pytest.raises(ValueError, match="n_patients"):
        sample_ids(0)
    with pytest.raises(ValueError, match="slides_per_patient"):
        sample_ids(2, -1)


def test_layout_names_every_file_written(tmp_path):
    from histofuse.demo import write_demo_hest_bench
    from histofuse.demo.layout import DemoLayout

    sheet = small(tmp_path, 2, n_patients=2, mpp=1.0, n_genes=12)
    write_demo_hest_bench(tmp_path, patch_px=16, patch_mpp=1.0, n_genes=5)
    layout = DemoLayout(tmp_path, patients=2, slides_per_patient=1, hest_bench=True)
    assert sheet == layout.sheet
    expected = {layout.sheet, layout.marker, layout.bulk_table, *layout.hest_bench_files()}
    expected |= {layout.slide(s) for s in layout.sample_ids}
    expected |= {layout.expression(s) for s in layout.sample_ids}
    assert {p for p in tmp_path.rglob("*") if p.is_file()} == expected
