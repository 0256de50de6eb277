import pytest

from histofuse.errors import HistofuseError
from histofuse.samples import load_samples


def _sheet(tmp_path, rows, header="sample_id\tpatient_id\tslide\texpression\tmpp"):
    (tmp_path / "s.tiff").write_bytes(b"x")
    (tmp_path / "s.h5ad").write_bytes(b"x")
    p = tmp_path / "samples.tsv"
    p.write_text(header + "\n" + "\n".join(rows) + "\n")
    return p


def test_relative_paths_resolve_against_the_sheet(tmp_path):
    df = load_samples(_sheet(tmp_path, ["A\tP1\ts.tiff\ts.h5ad\t0.25", "B\tP1\ts.tiff\t\t"]))
    assert df.at["A", "slide"] == str((tmp_path / "s.tiff").resolve())
    assert df.at["A", "mpp"] == 0.25
    assert df.at["B", "expression"] == ""
    assert df.at["B", "mpp"] != df.at["B", "mpp"]  # NaN: no override
    assert df["mpp_source"].tolist() == ["override", ""]


@pytest.mark.parametrize(
    ("rows", "header", "message"),
    [
        (
            ["A\tP1\ts.tiff\ts.h5ad\t", "A\tP2\ts.tiff\ts.h5ad\t"],
            None,
            "duplicate sample_id 'A' \\(rows 2, 3\\)",
        ),
        (
            ["A\tP1\tmissing.tiff\ts.h5ad\t"],
            None,
            "row 2 \\(A\\): slide file .*missing.tiff does not exist",
        ),
        (["A\tP1\ts.tiff\ts.h5ad\t-1"], None, "row 2: mpp '-1' must be a positive number"),
        (["\t\t\t"], "sample_id\tpatient_id\tslide", "row 2 has more .* fields than the header"),
        (["X\tA\tP1\ts.tiff"], "sample_id\tpatient_id\tslide", "row 2 has more .* fields"),
        (["A\tP1\ts.tiff"], "sample_id\tpatient\tslide", "lacks column\\(s\\) patient_id"),
        (
            ["A\tP1\ts.tiff\tx"],
            "sample_id\tpatient_id\tslide\tcolour",
            "unknown column\\(s\\) colour",
        ),
        (["A/B\tP1\ts.tiff\ts.h5ad\t"], None, "sample_id 'A/B' may only use"),
        (["A\t\ts.tiff\ts.h5ad\t"], None, "row 2: `patient_id` is empty"),
        (["A\tP1\ts.tiff\ts.csv\t"], None, r"row 2 \(A\): `expression` = 's.csv' is invalid"),
    ],
)
def test_bad_sheets_name_the_problem(tmp_path, rows, header, message):
    kwargs = {"header": header} if header else {}
    with pytest.raises(HistofuseError, match=message):
        load_samples(_sheet(tmp_path, rows, **kwargs))


def test_missing_sheet(tmp_path):
    with pytest.raises(HistofuseError, match="sample sheet .*nope.tsv does not exist"):
        load_samples(tmp_path / "nope.tsv")


def test_hest1k_folder_becomes_the_sample_table(small_cohort, tmp_path):
    import json
    import shutil

    from histofuse.errors import HistofuseError
    from histofuse.samples import load_samples
    from histofuse.slides.spec import TilingSpec
    from histofuse.slides.tiling import tile_sample

    sheet = load_samples(small_cohort)
    hest = tmp_path / "hest"
    for sub in ("wsis", "st", "metadata"):
        (hest / sub).mkdir(parents=True)
    for i, (sid, row) in enumerate(sheet.iterrows()):
        shutil.copy(row["slide"], hest / "wsis" / f"{sid}.tif")
        shutil.copy(row["expression"], hest / "st" / f"{sid}.h5ad")
        meta = {"pixel_size_um_estimated": 0.5, "patient": row["patient_id"] if i else None}
        (hest / "metadata" / f"{sid}.json").write_text(json.dumps(meta))
    table = load_samples(hest)
    assert table.index.tolist() == sorted(sheet.index)
    first = table.index[0]
    assert table.at[first, "patient_id"] == first  # no patient in the metadata
    assert (
        table["patient_id"].iloc[1:].tolist() == sheet.loc[table.index[1:], "patient_id"].tolist()
    )
    assert (table["mpp"] == 0.5).all() and table["slide"].str.endswith(".tif").all()
    assert (table["mpp_source"] == "hest-metadata").all()
    spec = TilingSpec.from_config({"patch_um": 56.0, "target_mpp": 1.0})
    row = table.loc[first]
    tiles, meta, _ = tile_sample(
        row["slide"], spec, row["expression"], row["mpp"], mpp_source=row["mpp_source"]
    )
    assert meta["mpp_source"] == "hest-metadata" and len(tiles) > 0
    # the tile command of a HEST-1k folder records the same source
    import subprocess
    import sys
    from pathlib import Path

    exe = Path(sys.executable).parent / "histofuse"
    r = subprocess.run(
        [str(exe), "tile", "--sheet", str(hest), "--sample", first, "--tiling",
         '{"patch_um": 56, "target_mpp": 1}', "--out-dir", str(tmp_path / "tiles")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    stats = json.loads((tmp_path / "tiles" / f"{first}.json").read_text())
    assert stats["mpp_source"] == "hest-metadata" and stats["n_tiles"] == len(tiles)
    # the HEST estimate wins over the slide header: a wrong estimate changes the patch size
    (hest / "metadata" / f"{first}.json").write_text(json.dumps({"pixel_size_um_estimated": 0.25}))
    row = load_samples(hest).loc[first]
    tiles, meta, _ = tile_sample(
        row["slide"], spec, row["expression"], row["mpp"], mpp_source=row["mpp_source"]
    )
    assert meta["mpp_x"] == 0.25 and (tiles["size0"] == 224).all()
    # without an estimate the slide's own metadata decides, and says so
    (hest / "metadata" / f"{first}.json").write_text("{}")
    row = load_samples(hest).loc[first]
    assert row["mpp"] != row["mpp"] and row["mpp_source"] == ""
    tiles, meta, _ = tile_sample(row["slide"], spec, row["expression"], None)
    assert meta["mpp_source"] == "openslide.mpp" and meta["mpp_x"] == pytest.approx(0.5)
    assert (tiles["size0"] == 112).all()
    (hest / "metadata" / f"{first}.json").write_text('{"pixel_size_um_estimated": "n/a"}')
    with pytest.raises(HistofuseError, match=f"{first}.json: `pixel_size_um_estimated` = 'n/a'"):
        load_samples(hest)
    (hest / "metadata" / f"{first}.json").write_text("{}")
    (hest / "st" / f"{first}.h5ad").unlink()
    with pytest.raises(HistofuseError, match=f"{first}.tif has no st/{first}.h5ad"):
        load_samples(hest)


def test_tasks_column_chooses_the_tasks_of_each_sample(tmp_path):
    from pathlib import Path

    import yaml

    from histofuse.config import load_schema, validate_config
    from histofuse.plan import Plan

    header = "sample_id\tpatient_id\tslide\texpression\ttasks"
    rows = [
        "A\tP1\ts.tiff\ts.h5ad\tspots",
        "B\tP2\ts.tiff\ts.h5ad\t",
        "C\tP3\ts.tiff\ts.h5ad\tx; spots",
    ]
    rows.append("D\tP4\ts.tiff\t\tspots")  # no expression: in no spot task
    sheet = _sheet(tmp_path, rows, header)
    df = load_samples(sheet)
    assert df["tasks"].tolist() == ["spots", "", "x,spots", "spots"]
    repo = Path(__file__).resolve().parents[1]
    cfg = yaml.safe_load((repo / "config/config.yaml").read_text())
    cfg.update(samples=str(sheet), demo={"enabled": False})
    cfg["tasks"] = {"spots": {}, "x": {}}
    schema = load_schema()
    plan = Plan.from_config(validate_config(cfg, schema))
    assert plan.task_samples("spots") == ["A", "B", "C"]
    assert plan.task_samples("x") == ["B", "C"]  # B: empty cell, every task
    cfg["tasks"] = {"spots": {}}
    with pytest.raises(HistofuseError, match=r"sample C names task\(s\) \['x'\]"):
        Plan.from_config(validate_config(cfg, schema))
    with pytest.raises(
        HistofuseError, match=r"row 2 \(A\): `tasks` = 'a b' is invalid; expected task"
    ):
        load_samples(_sheet(tmp_path, ["A\tP1\ts.tiff\ts.h5ad\ta b"], header))
