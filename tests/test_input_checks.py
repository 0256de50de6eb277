"""Inputs checked for what they claim to be: counts, unique names, spots on the slide's tissue.

Every test alters a real generated cohort (slides and ``.h5ad`` files of ``histofuse.demo``) the
way real data goes wrong, and checks that the tile step or the counts reader refuses it with a
message naming the file, what was found and the fix.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import anndata
import numpy as np
import pytest
from scipy import sparse

from histofuse.data.expression import read_counts
from histofuse.errors import HistofuseError
from histofuse.samples import load_samples
from histofuse.slides.spec import TilingSpec
from histofuse.slides.tiling import read_spots, tile_sample
from histofuse.slides.wsi import open_slide

SPEC = {"patch_um": 56.0, "target_mpp": 1.0}


def _first(small_cohort: Path) -> tuple[str, str]:
    sheet = load_samples(small_cohort)
    return sheet["slide"].iloc[0], sheet["expression"].iloc[0]


def _rewrite(expr: str, out: Path, **change) -> Path:
    """A copy of a real expression file with ``X``, ``obs_names``, ``var_names`` or spots changed."""
    adata = anndata.read_h5ad(expr)
    if "X" in change:
        adata.X = change["X"](adata.X.toarray().astype(np.float64))
    if "obs_names" in change:
        adata.obs_names = change["obs_names"](list(adata.obs_names))
    if "var_names" in change:
        adata.var_names = change["var_names"](list(adata.var_names))
    if "spatial" in change:
        adata.obsm["spatial"] = change["spatial"](np.asarray(adata.obsm["spatial"], np.float64))
    adata.write_h5ad(out)
    return out


def _cli(*args: str) -> subprocess.CompletedProcess:
    exe = str(Path(sys.executable).parent / "histofuse")
    return subprocess.run([exe, *args], capture_output=True, text=True)


# --- counts that are not counts ------------------------------------------------------------


def _log_normalised(x: np.ndarray) -> np.ndarray:
    """What scanpy's normalize_total(1e4) + log1p writes: the usual already-normalised file."""
    return np.log1p(x / np.maximum(x.sum(axis=1, keepdims=True), 1) * 1e4)


@pytest.mark.parametrize("transform", ["log1p", "log1p_cpm", "log2_cp10k"])
def test_log_normalised_expression_is_refused_under_a_counts_transform(
    small_cohort, tmp_path, transform
):
    _, expr = _first(small_cohort)
    raw = read_counts(expr, transform=transform)  # the generated raw counts pass
    assert (raw.to_numpy() == np.rint(raw.to_numpy())).all()
    logged = _rewrite(
        expr, tmp_path / "logged.h5ad", X=lambda x: sparse.csr_matrix(_log_normalised(x))
    )
    with pytest.raises(HistofuseError) as err:
        read_counts(logged, transform=transform)
    msg = str(err.value)
    assert str(logged) in msg and "looks log-normalised" in msg and "\n" not in msg
    assert f"transform {transform} needs raw counts" in msg and "`transform: none`" in msg
    # the fixes the message names: `transform: none` takes the values as they are ...
    values = read_counts(logged, transform="none").to_numpy()
    np.testing.assert_allclose(values, _log_normalised(raw.to_numpy()), rtol=1e-6)
    # ... and `integer_counts: false` accepts non-integer counts under a counts transform
    assert read_counts(logged, transform=transform, integer_counts=False).shape == raw.shape


def test_the_message_says_how_much_is_not_integer(small_cohort, tmp_path):
    _, expr = _first(small_cohort)
    raw = read_counts(expr).to_numpy()
    logged = _rewrite(expr, tmp_path / "logged.h5ad", X=_log_normalised)  # dense X
    expected = _log_normalised(raw)
    nonzero = expected[expected != 0]
    share = 100 * np.mean(nonzero != np.rint(nonzero))
    with pytest.raises(
        HistofuseError, match=rf"max {expected.max():.3g}, {share:.0f} % of non-zero"
    ):
        read_counts(logged, transform="log1p")


def test_cpm_scaled_counts_are_called_normalised(small_cohort, tmp_path):
    _, expr = _first(small_cohort)
    cpm = _rewrite(expr, tmp_path / "cpm.h5ad", X=lambda x: x / x.sum(1, keepdims=True) * 1e6)
    with pytest.raises(HistofuseError, match=r"looks normalised \(scaled counts\)"):
        read_counts(cpm, transform="log1p_cpm")


def test_negative_expression_is_refused_not_called_constant(small_cohort, tmp_path):
    _, expr = _first(small_cohort)
    z = _rewrite(
        expr, tmp_path / "z.h5ad", X=lambda x: (x - x.mean(0)) / np.maximum(x.std(0), 1e-9)
    )
    with pytest.raises(HistofuseError) as err:
        read_counts(z, transform="log1p")
    msg = str(err.value)
    assert str(z) in msg and "negative values" in msg and "look scaled or centred" in msg
    # integer_counts does not open the door to negative counts
    with pytest.raises(HistofuseError, match="negative values"):
        read_counts(z, transform="log1p", integer_counts=False)
    assert read_counts(z, transform="none").to_numpy().min() < 0  # predicted as they are


def test_non_finite_counts_are_left_to_the_spot_filter(small_cohort, tmp_path):
    _, expr = _first(small_cohort)

    def one_nan(x):
        x[0, 0] = np.nan
        return x

    nan = _rewrite(expr, tmp_path / "nan.h5ad", X=one_nan)
    assert np.isnan(read_counts(nan, transform="log1p").to_numpy()[0, 0])


# --- duplicate genes or barcodes, at tile time -----------------------------------------------


def _dup_first(names: list[str]) -> list[str]:
    return [names[0], names[0], *names[2:]]


@pytest.mark.parametrize(("axis", "what"), [("var_names", "gene names"), ("obs_names", "barcodes")])
def test_duplicate_genes_or_barcodes_are_refused_at_tile_time(small_cohort, tmp_path, axis, what):
    slide, expr = _first(small_cohort)
    names = list(getattr(anndata.read_h5ad(expr), axis))
    with warnings.catch_warnings():  # anndata may warn that the names are not unique
        warnings.simplefilter("ignore")
        dup = _rewrite(expr, tmp_path / "dup.h5ad", **{axis: _dup_first})
    pattern = rf"expression file {dup} has 1 duplicate {what}, e.g. '{names[0]}'"
    with pytest.raises(HistofuseError, match=pattern):
        read_spots(dup)
    with pytest.raises(HistofuseError, match=pattern):
        tile_sample(slide, TilingSpec.from_config(SPEC), dup)
    with pytest.raises(HistofuseError, match=pattern):
        read_counts(dup)
    # through the tile verb: one line, exit 2, no tiles written
    out = tmp_path / "s.parquet"
    r = _cli("tile", "--sample", "s", "--slide", slide, "--expression", str(dup), "--out", str(out))
    assert r.returncode == 2 and not out.exists()
    assert r.stderr.count("\n") == 1 and f"duplicate {what}" in r.stderr


# --- spots on tissue ------------------------------------------------------------------------


def _on_tissue_by_hand(mask: np.ndarray, ds: float, xy: np.ndarray, size: tuple[int, int]) -> float:
    """Fraction of centres inside the image whose mask pixel (level-0 px // ds) is tissue."""
    hits = 0
    for x, y in xy:
        if 0 <= x < size[0] and 0 <= y < size[1]:
            r, c = int(y // ds), int(x // ds)
            hits += bool(r < mask.shape[0] and c < mask.shape[1] and mask[r, c])
    return hits / len(xy)


def test_the_demo_spots_lie_on_tissue_and_the_fraction_is_recorded(small_cohort):
    sheet = load_samples(small_cohort)
    for _, row in sheet.iterrows():
        table, meta, tissue = tile_sample(
            row["slide"], TilingSpec.from_config(SPEC), row["expression"]
        )
        _, xy = read_spots(row["expression"])
        with open_slide(row["slide"]) as s:
            size = s.dimensions
        expected = _on_tissue_by_hand(tissue.mask, tissue.downsample, xy, size)
        assert meta["spots_on_tissue"] == pytest.approx(expected)
        assert meta["spots_on_tissue"] >= 0.95 and meta["min_spots_on_tissue"] == 0.8
        assert len(table) == len(xy)


@pytest.mark.parametrize(
    ("case", "move"),
    [
        ("x/y swapped", lambda xy, mpp: xy[:, ::-1]),
        ("µm instead of pixels", lambda xy, mpp: xy * mpp),
    ],
)
def test_spots_off_the_tissue_are_refused_naming_the_causes(small_cohort, tmp_path, case, move):
    slide, expr = _first(small_cohort)
    with open_slide(slide) as s:
        mpp = float(s.properties["openslide.mpp-x"])
    assert mpp == 0.5  # so µm coordinates are half the pixel ones
    moved = _rewrite(expr, tmp_path / "moved.h5ad", spatial=lambda xy: move(xy, mpp))
    spec = TilingSpec.from_config(SPEC)
    with pytest.raises(HistofuseError) as err:
        tile_sample(slide, spec, moved)
    msg = str(err.value)
    assert str(moved) in msg and slide in msg and "spot centres lie on the tissue" in msg
    for cause in (
        "x/y swapped",
        "µm instead of full-resolution",
        "wrong scale factor",
        "wrong slide",
    ):
        assert cause in msg
    assert "`tiling.min_spots_on_tissue` (0.8)" in msg
    # a lowered threshold is the opt-out; the low fraction is recorded
    if case.startswith("µm"):
        _, meta, _ = tile_sample(slide, spec, moved, min_spots_on_tissue=0.3)
        assert 0.3 <= meta["spots_on_tissue"] < 0.8 and meta["min_spots_on_tissue"] == 0.3


def test_the_tile_verb_records_spots_on_tissue_in_the_stats(small_cohort, tmp_path):
    slide, expr = _first(small_cohort)
    out = tmp_path / "s.parquet"
    r = _cli("tile", "--sample", "s", "--slide", slide, "--expression", expr, "--out", str(out),
             "--tiling", json.dumps(SPEC))  # fmt: skip
    assert r.returncode == 0, r.stderr
    stats = json.loads((tmp_path / "s.json").read_text())
    _, meta, _ = tile_sample(slide, TilingSpec.from_config(SPEC), expr)
    assert stats["spots_on_tissue"] == pytest.approx(meta["spots_on_tissue"])
    assert stats["spots_on_tissue"] >= 0.95
    assert stats["min_spots_on_tissue"] == 0.8


def test_the_tile_verb_takes_the_threshold_from_its_tiling_document(small_cohort, tmp_path):
    slide, expr = _first(small_cohort)
    in_um = _rewrite(expr, tmp_path / "um.h5ad", spatial=lambda xy: xy * 0.5)  # µm, not px
    args = ("tile", "--sample", "s", "--slide", slide, "--expression", str(in_um))
    refused = _cli(*args, "--out", str(tmp_path / "a.parquet"), "--tiling", json.dumps(SPEC))
    assert refused.returncode == 2 and "tiling.min_spots_on_tissue" in refused.stderr
    lowered = json.dumps({**SPEC, "min_spots_on_tissue": 0.0})
    kept = _cli(*args, "--out", str(tmp_path / "b.parquet"), "--tiling", lowered)
    assert kept.returncode == 0, kept.stderr
    stats = json.loads((tmp_path / "b.json").read_text())
    assert stats["min_spots_on_tissue"] == 0.0 and stats["spots_on_tissue"] < 0.8
