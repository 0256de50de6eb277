"""The tiling spec from the config's ``tiling`` section, and atomic tiling outputs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from histofuse.errors import HistofuseError
from histofuse.slides.spec import TilingSpec
from histofuse.slides.tiling import read_tiles, write_tiles

# The fingerprint of the default tiling section, as computed before the spec was built from the
# config (part of every feature store's cache key: it must not change).
DEFAULT_FINGERPRINT = "dcbd538bb7ec1e7b"


def test_default_section_keeps_its_fingerprint():
    assert TilingSpec.from_config().fingerprint() == DEFAULT_FINGERPRINT
    # whole numbers written as integers, and the run policy, change nothing
    doc = {"patch_um": 112, "spot_min_tissue": 0, "on_error": "record", "jobs": "shard"}
    spec = TilingSpec.from_config(doc)
    assert spec.fingerprint() == DEFAULT_FINGERPRINT
    assert spec.patch_um == 112.0 and isinstance(spec.patch_um, float)
    assert spec.patch_px == 224 and spec.step_um == 112.0


def test_settings_change_the_fingerprint():
    base = TilingSpec.from_config().fingerprint()
    assert TilingSpec.from_config({"mode": "grid"}).fingerprint() != base
    assert TilingSpec.from_config({"tissue": {"method": "od"}}).fingerprint() != base


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"patch_size": 3}, "patch_size"),
        ({"mode": "hexagons"}, "mode"),
        ({"min_tissue": 2}, "min_tissue"),
    ],
)
def test_bad_tiling_sections_are_refused(doc, message):
    with pytest.raises(HistofuseError, match=message):
        TilingSpec.from_config(doc)


def _table() -> pd.DataFrame:
    return pd.DataFrame({"x": [1.0, 2.0], "y": [3.0, 4.0]})


def test_a_failing_tiles_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    out = tmp_path / "s.parquet"
    write_tiles(_table(), {"n_tiles": 2}, out)
    before = out.read_bytes()

    def half_written(table, where, *args, **kwargs):
        Path(where).write_bytes(b"PAR1 half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pq, "write_table", half_written)
    with pytest.raises(OSError, match="No space left"):
        write_tiles(_table().iloc[:1], {"n_tiles": 1}, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.parquet"]
    assert out.read_bytes() == before
    assert read_tiles(out)[1] == {"n_tiles": 2}


def test_tile_verb_reads_the_tiling_section_from_a_file(small_cohort, tmp_path):
    """``--tiling`` takes a file as well as inline JSON; the spec and policy come from it."""
    from histofuse.samples import load_samples

    sheet = load_samples(small_cohort)
    sample = sheet.index[0]
    tiling = tmp_path / "tiling.yaml"
    tiling.write_text("patch_um: 56\ntarget_mpp: 1\nmode: grid\nmin_tissue: 0.25\n")
    out = tmp_path / "o" / f"{sample}.parquet"
    exe = Path(sys.executable).parent / "histofuse"
    cmd = [str(exe), "tile", "--sample", sample, "--slide", sheet.at[sample, "slide"]]
    r = subprocess.run(
        [*cmd, "--tiling", str(tiling), "--out", str(out)], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    table, meta = read_tiles(out)
    want = TilingSpec.from_config(
        {"patch_um": 56, "target_mpp": 1, "mode": "grid", "min_tissue": 0.25}
    )
    assert meta["tiling_fingerprint"] == want.fingerprint() and meta["tiling"]["mode"] == "grid"
    assert len(table) > 0 and (table["tissue"] >= 0.25).all()
    stats = json.loads((tmp_path / "o" / f"{sample}.json").read_text())
    assert stats["n_tiles"] == len(table) and (tmp_path / "o" / f"{sample}.qc.png").is_file()
    bad = subprocess.run(
        [*cmd, "--tiling", '{"patch_um": -1}', "--out", str(out)], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "patch_um" in bad.stderr and "Traceback" not in bad.stderr


def test_recorded_failures_of_dotted_sample_ids_land_beside_their_tiles(tmp_path):
    """With ``on_error: record`` a sheet's broken sample gets its own three files, named after
    the whole sample id (ids may hold dots, as HEST-Bench ids ``task.sample`` do)."""
    (tmp_path / "broken.tiff").write_bytes(b"II*\x00 truncated")
    tsv = tmp_path / "samples.tsv"
    tsv.write_text("sample_id\tpatient_id\tslide\nT.a-1\tP1\tbroken.tiff\n")
    out = tmp_path / "tiles"
    exe = Path(sys.executable).parent / "histofuse"
    r = subprocess.run(
        [str(exe), "tile", "--sheet", str(tsv), "--sample", "T.a-1", "--out-dir", str(out),
         "--tiling", '{"on_error": "record"}'],
        capture_output=True, text=True,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "sample T.a-1: slide" in r.stderr and "(recorded)" in r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["T.a-1.json", "T.a-1.parquet", "T.a-1.qc.png"]
    table, meta = read_tiles(out / "T.a-1.parquet")
    assert len(table) == 0 and "cannot be read" in meta["error"]
    assert meta["tiling_fingerprint"] == DEFAULT_FINGERPRINT
