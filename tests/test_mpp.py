"""µm/px guards on real TIFFs: default resolution tags, implausible values, upsampling, overrides."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from histofuse.demo.pyramid import write_pyramid
from histofuse.errors import HistofuseError
from histofuse.slides.mpp import MppLimits, check_mpp
from histofuse.slides.run import TileJob, tile_one
from histofuse.slides.spec import TilingSpec

BIN = Path(sys.executable).parent
GRID = {"mode": "grid", "patch_um": 32.0, "target_mpp": 0.5, "min_tissue": 0.0}


def _image(height: int = 250, width: int = 300) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(120, 230, (height, width, 3), dtype=np.uint8)


def _tiff(path: Path, resolution: float, unit: str) -> Path:
    """A one-level tiled TIFF with a resolution tag, as PIL, ImageJ or an export writes it."""
    tifffile.imwrite(
        path, _image(), photometric="rgb", tile=(256, 256), resolution=(resolution, resolution),
        resolutionunit=unit,
    )  # fmt: skip
    return path


def _pyramid(path: Path, mpp: float) -> Path:
    write_pyramid(_image(600, 700), path, mpp)
    return path


def _tile(tmp_path: Path, slide: Path, tiling: dict, mpp: float | None = None) -> dict:
    """Tiles through the run layer (as the `tile` verb does); returns the stats JSON."""
    job = TileJob("S1", str(slide), tmp_path / "S1.parquet", mpp=mpp)
    tile_one(job, TilingSpec.from_config(tiling), "stop", MppLimits.from_config(tiling))
    return json.loads(job.stats_out.read_text())


@pytest.mark.parametrize(
    ("resolution", "unit", "dpi"),
    [(72 / 2.54, "CENTIMETER", 72), (72.0, "INCH", 72), (96 / 2.54, "CENTIMETER", 96)],
)
def test_default_resolution_tag_is_no_mpp(tmp_path, resolution, unit, dpi):
    slide = _tiff(tmp_path / "export.tif", resolution, unit)
    with pytest.raises(HistofuseError) as err:
        _tile(tmp_path, slide, GRID)
    message = str(err.value)
    assert message.startswith("sample S1: slide ") and "export.tif" in message
    assert f"{dpi}-dpi default resolution tag" in message and "`mpp` column" in message
    assert not (tmp_path / "S1.parquet").exists()
    # the sheet's `mpp` is the opt-out; a default tag is no metadata to disagree with
    stats = _tile(tmp_path, slide, GRID, mpp=0.5)
    assert stats["mpp_source"] == "override" and stats["mpp_slide"] is None
    assert stats["warnings"] == [] and stats["n_tiles"] == 4 * 3  # 150 × 125 µm in 32 µm tiles


def test_pil_72_dpi_tag_as_reported(tmp_path):
    # PIL writes 72 dpi as 28.35 px/cm: 352.73 µm/px, which tiled 365,696 one-pixel patches
    slide = _tiff(tmp_path / "pil.tif", 28.35, "CENTIMETER")
    with pytest.raises(HistofuseError, match=r"352\.7\d \(from \S+\) is the 72-dpi default"):
        check_mpp(slide, 1.0, MppLimits.from_config())


def test_mpp_outside_the_plausible_range(tmp_path):
    slide = _tiff(tmp_path / "coarse.tif", 500.0, "CENTIMETER")  # 20 µm/px
    with pytest.raises(HistofuseError) as err:
        _tile(tmp_path, slide, {**GRID, "target_mpp": 20.0})
    assert "coarse.tif: µm/px 20 (from " in str(err.value)
    assert "plausible range 0.1–10" in str(err.value) and "`tiling.mpp_range`" in str(err.value)
    # a wrong override is refused too, naming the same keys
    with pytest.raises(HistofuseError, match=r"µm/px 0\.01 \(from override\).*`mpp` column"):
        _tile(tmp_path, slide, GRID, mpp=0.01)
    # opt-out: a wider range
    stats = _tile(
        tmp_path, slide, {**GRID, "patch_um": 400.0, "target_mpp": 20.0, "mpp_range": [0.1, 30]}
    )
    assert stats["mpp_x"] == pytest.approx(20.0) and stats["upsample"] == pytest.approx(1.0)


def test_upsampling_beyond_the_limit_is_refused(tmp_path):
    slide = _pyramid(tmp_path / "slide.tiff", 0.5)
    with pytest.raises(HistofuseError) as err:
        _tile(tmp_path, slide, {**GRID, "target_mpp": 0.25})
    message = str(err.value)
    assert "slide.tiff: at 0.5 µm/px (from openslide.mpp)" in message
    assert "upsample it 2× (more than `tiling.max_upsample` 1.5)" in message
    assert "`mpp` column" in message
    assert _tile(tmp_path, slide, {**GRID, "target_mpp": 0.4})["upsample"] == pytest.approx(1.25)
    # opt-out: a higher limit, or none
    for limit in (2.5, None):
        stats = _tile(tmp_path, slide, {**GRID, "target_mpp": 0.25, "max_upsample": limit})
        assert stats["upsample"] == pytest.approx(2.0) and stats["mpp_slide"] == pytest.approx(0.5)


def test_disagreeing_override_is_a_recorded_warning(tmp_path, capsys):
    slide = _pyramid(tmp_path / "slide.tiff", 0.499)
    stats = _tile(tmp_path, slide, GRID, mpp=0.25)
    assert stats["mpp_x"] == 0.25 and stats["mpp_slide"] == pytest.approx(0.499, rel=1e-4)
    [warning] = stats["warnings"]
    assert "the sheet's `mpp` 0.25 (override) differs from the slide's own 0.499" in warning
    assert "by 50%" in warning
    assert f"sample S1: {warning}" in capsys.readouterr().err
    assert _tile(tmp_path, slide, GRID, mpp=0.47)["warnings"] == []  # 6 %: within 10 %
    assert _tile(tmp_path, slide, {**GRID, "mpp_disagreement": 0.6}, mpp=0.25)["warnings"] == []


def test_tile_verb_refuses_a_default_tag_in_one_line(tmp_path):
    slide = _tiff(tmp_path / "export.tif", 72.0, "INCH")
    cmd = [str(BIN / "histofuse"), "tile", "--sample", "S1", "--slide", str(slide)]
    cmd += ["--tiling", json.dumps(GRID), "--out", str(tmp_path / "S1.parquet")]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().count("\n") == 0
    assert "histofuse: error: sample S1: slide" in proc.stderr and "72-dpi default" in proc.stderr
    # opt-out on the command line: the `--mpp` override
    proc = subprocess.run([*cmd, "--mpp", "0.5"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_mpp_range_must_be_low_high():
    with pytest.raises(
        HistofuseError, match=r"`tiling.mpp_range` = \[5, 1\] must be \[low, high\]"
    ):
        MppLimits.from_config({"mpp_range": [5, 1]})
