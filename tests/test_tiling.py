import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import openslide
import pytest
import tifffile
from PIL import Image

from histofuse.errors import HistofuseError
from histofuse.samples import load_samples
from histofuse.slides.reader import TileDataset, best_level
from histofuse.slides.spec import TilingSpec
from histofuse.slides.tiling import read_spots, read_tiles, tile_spots, write_tiles
from histofuse.slides.wsi import open_slide


def test_spot_patches_are_centred_on_the_spots(small_cohort, small_tiles):
    sheet = load_samples(small_cohort)
    for sample, path in small_tiles.items():
        table, meta = read_tiles(path)
        barcodes, xy = read_spots(sheet.at[sample, "expression"])
        assert table["barcode"].tolist() == barcodes.tolist()
        mpp = meta["mpp_x"]
        assert meta["mpp_source"] == "openslide.mpp"
        size0 = 56.0 / mpp
        centre = table[["x0", "y0"]].to_numpy() + table[["size0"]].to_numpy() / 2
        assert np.abs(centre - xy).max() <= 1.0  # within one level-0 pixel
        assert (table["size0"] == round(size0)).all()
        np.testing.assert_allclose(table["x_um"], xy[:, 0] * mpp)
        # effective µm/px of the patch handed to encoders is the target (within 1 %)
        effective = table["size0"].iloc[0] * mpp / meta["patch_px"]
        assert effective == pytest.approx(1.0, rel=0.01)


def test_reader_returns_target_size_patches_matching_an_independent_read(small_cohort, small_tiles):
    path = next(iter(small_tiles.values()))
    table, meta = read_tiles(path)
    ds = TileDataset(table, meta)
    assert len(ds) == len(table)
    patch = ds[0]
    assert patch.shape == (56, 56, 3) and patch.dtype == np.uint8
    with openslide.OpenSlide(meta["slide"]) as slide:
        x0, y0, s0 = table.loc[0, ["x0", "y0", "size0"]]
        ref = slide.read_region((int(x0), int(y0)), 0, (int(s0), int(s0))).convert("RGB")
        ref = np.asarray(ref.resize((56, 56), Image.Resampling.LANCZOS)).astype(float)
    assert np.abs(patch.astype(float) - ref).mean() < 6.0  # level choice and JPEG differ slightly
    assert patch.std() > 5  # tissue, not blank


def test_best_level():
    assert best_level((1.0, 4.0, 16.0), 2.0) == 0
    assert best_level((1.0, 4.0, 16.0), 4.0) == 1
    assert best_level((1.0, 4.0, 16.0), 100.0) == 2
    assert best_level((1.0, 4.0), 0.5) == 0


def test_slide_without_mpp_needs_an_override(small_cohort, tmp_path):
    sheet = load_samples(small_cohort)
    expr = sheet["expression"].iloc[0]
    slide = tmp_path / "nompp.tiff"
    with openslide.OpenSlide(sheet["slide"].iloc[0]) as s:
        # the same pixels without a resolution tag: the spots still lie on its tissue
        img = np.asarray(s.read_region((0, 0), 0, s.dimensions).convert("RGB"))
    tifffile.imwrite(slide, img, tile=(256, 256), photometric="rgb", compression="jpeg")
    spec = TilingSpec.from_config({"patch_um": 56.0, "target_mpp": 1.0})
    with pytest.raises(HistofuseError, match="nompp.tiff has no µm/px.*`mpp` column"):
        tile_spots(slide, expr, spec)
    table, meta = tile_spots(slide, expr, spec, mpp_override=0.5)
    assert meta["mpp_source"] == "override" and (table["size0"] == 112).all()


def test_unreadable_and_missing_slides(tmp_path):
    bad = tmp_path / "bad.tiff"
    bad.write_bytes(b"not a slide at all")
    with pytest.raises(HistofuseError, match="bad.tiff cannot be read by OpenSlide"):
        open_slide(bad)
    with pytest.raises(HistofuseError, match="gone.tiff does not exist"):
        open_slide(tmp_path / "gone.tiff")


def test_spots_outside_the_slide_are_an_error(small_cohort, tmp_path):
    import anndata

    sheet = load_samples(small_cohort)
    adata = anndata.read_h5ad(sheet["expression"].iloc[0])
    spatial = np.asarray(adata.obsm["spatial"], dtype=np.float64)
    # most spots scaled off the slide: the placement error counts the ones outside
    adata.obsm["spatial"] = spatial * 100
    moved = tmp_path / "moved.h5ad"
    adata.write_h5ad(moved)
    n = adata.n_obs
    with pytest.raises(HistofuseError, match=rf"only 0% of {n} spot centres.*\({n} outside"):
        tile_spots(sheet["slide"].iloc[0], moved, TilingSpec.from_config())
    # one spot outside, the others on tissue: still an error, naming that spot
    spatial[0] = [-5.0, 10.0]
    adata.obsm["spatial"] = spatial
    adata.write_h5ad(moved)
    with pytest.raises(
        HistofuseError, match=rf"1 spot centres lie outside slide.*{adata.obs_names[0]}"
    ):
        tile_spots(sheet["slide"].iloc[0], moved, TilingSpec.from_config())


def test_tiles_file_round_trip_and_errors(tmp_path, small_tiles):
    table, meta = read_tiles(next(iter(small_tiles.values())))
    write_tiles(table, meta, tmp_path / "t.parquet")
    t2, m2 = read_tiles(tmp_path / "t.parquet")
    assert m2 == meta and t2.equals(table)
    table.to_parquet(tmp_path / "plain.parquet")
    with pytest.raises(HistofuseError, match="no histofuse metadata"):
        read_tiles(tmp_path / "plain.parquet")


def test_grid_tiles_match_an_independent_grid_over_tissue(small_cohort, tmp_path):
    from histofuse.slides.tiling import tile_sample

    sheet = load_samples(small_cohort)
    slide = sheet["slide"].iloc[0]
    spec = TilingSpec.from_config(
        {"mode": "grid", "patch_um": 48.0, "target_mpp": 0.75, "stride_um": 40.0, "min_tissue": 0.5}
    )
    table, meta, mask = tile_sample(slide, spec)
    with openslide.OpenSlide(slide) as s:
        mpp = float(s.properties["openslide.mpp-x"])
        w, h = s.dimensions
    # independent grid: centres at k · stride + patch / 2 (µm), all that fit in the slide
    side, step = 48.0 / mpp, 40.0 / mpp
    xs = np.arange(0, w - side + 1e-6, step) + side / 2
    ys = np.arange(0, h - side + 1e-6, step) + side / 2
    assert meta["n_candidates"] == len(xs) * len(ys)
    centres = table[["x0", "y0"]].to_numpy() + table[["size0"]].to_numpy() / 2
    ix = np.rint((centres[:, 0] - side / 2) / step).astype(int)
    iy = np.rint((centres[:, 1] - side / 2) / step).astype(int)
    assert np.abs(centres[:, 0] - xs[ix]).max() <= 1.0
    assert np.abs(centres[:, 1] - ys[iy]).max() <= 1.0
    assert meta["effective_mpp"] == pytest.approx(0.75, rel=0.01)
    assert meta["mpp_source"] == "openslide.mpp"
    # kept tiles are the tissue ones, and the slide has background that was dropped
    assert (table["tissue"] >= 0.5).all() and 0 < len(table) < meta["n_candidates"]
    # tissue fraction of each tile recomputed from the mask by brute force
    ds = mask.downsample
    for x0, y0, s0, frac in table[["x0", "y0", "size0", "tissue"]].to_numpy()[:20]:
        x0, y0, s0 = int(x0), int(y0), int(s0)
        sub = mask.mask[
            round(y0 / ds) : round((y0 + s0) / ds), round(x0 / ds) : round((x0 + s0) / ds)
        ]
        assert frac == pytest.approx(sub.mean())


def test_tissue_mask_finds_tissue_on_white_and_black_backgrounds(tmp_path):
    from histofuse.slides.tissue import detect_tissue

    rng = np.random.default_rng(0)
    for bg in (245, 5):
        img = np.full((1024, 1024, 3), bg, dtype=np.uint8)
        tissue = np.zeros((1024, 1024), bool)
        yy, xx = np.mgrid[:1024, :1024]
        tissue[(yy - 500) ** 2 + (xx - 420) ** 2 < 300**2] = True
        pink = np.stack(
            [
                200 + rng.integers(-20, 20, tissue.sum()),
                90 + rng.integers(-20, 20, tissue.sum()),
                170 + rng.integers(-20, 20, tissue.sum()),
            ],
            axis=1,
        )
        img[tissue] = pink.clip(0, 255).astype(np.uint8)
        path = tmp_path / f"bg{bg}.tiff"
        from histofuse.demo.pyramid import write_pyramid

        write_pyramid(img, path, 0.5)
        for method in ("saturation", "od"):
            with openslide.OpenSlide(path) as s:
                m = detect_tissue(
                    s, 0.5, TilingSpec.from_config({"tissue": {"method": method}}).tissue
                )
            truth = tissue[:: int(m.downsample), :: int(m.downsample)][
                : m.mask.shape[0], : m.mask.shape[1]
            ]
            iou = (m.mask & truth).sum() / (m.mask | truth).sum()
            assert iou > 0.9, (bg, method, iou)


def test_mpp_from_tiff_resolution_and_vendor_keys():
    from histofuse.slides.wsi import _metadata_mpp

    assert _metadata_mpp(
        {
            "tiff.XResolution": "40000",
            "tiff.YResolution": "20000",
            "tiff.ResolutionUnit": "centimeter",
        }
    ) == (0.25, 0.5, "tiff.resolution")
    assert _metadata_mpp({"tiff.XResolution": "72", "tiff.YResolution": "72"}) is None  # no unit
    assert _metadata_mpp({"aperio.MPP": "0.2527"}) == (0.2527, 0.2527, "aperio.MPP")
    assert (
        _metadata_mpp({"openslide.mpp-x": "0.3", "openslide.mpp-y": "0.3", "aperio.MPP": "9"})[2]
        == "openslide.mpp"
    )


def test_block_reader_gives_the_same_patches_as_tile_by_tile(small_cohort):
    from histofuse.slides.reader import plan_blocks
    from histofuse.slides.tiling import tile_sample

    sheet = load_samples(small_cohort)
    spec = TilingSpec.from_config(
        {"mode": "grid", "patch_um": 64.0, "target_mpp": 1.0, "min_tissue": 0.0}
    )
    table, meta, _ = tile_sample(sheet["slide"].iloc[1], spec)
    blocked, single = TileDataset(table, meta), TileDataset(table, meta, block_px=0)
    for i in range(len(table)):
        np.testing.assert_array_equal(blocked[i], single[i])
    block_of, blocks = plan_blocks(blocked._lboxes)
    assert len(blocks) < len(table) / 3  # adjacent tiles share reads
    assert np.all(np.diff(block_of) >= 0) and np.all(np.bincount(block_of) <= 8)


def _cli(*args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "histofuse"
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=300)


def test_bad_samples_fail_alone_with_keep_going(small_cohort, tmp_path):
    sheet = load_samples(small_cohort)
    good = sheet.iloc[0]
    nompp = tmp_path / "nompp.tiff"
    tifffile.imwrite(nompp, np.full((512, 512, 3), 200, np.uint8), tile=(256, 256))
    (tmp_path / "broken.tiff").write_bytes(b"II*\x00 truncated")
    rows = [
        ("good", "P1", good["slide"], good["expression"]),
        ("nompp", "P1", "nompp.tiff", ""),
        ("broken", "P2", "broken.tiff", ""),
        ("missing", "P2", "gone/missing.tiff", ""),
    ]
    tsv = tmp_path / "samples.tsv"
    tsv.write_text(
        "sample_id\tpatient_id\tslide\texpression\n" + "".join("\t".join(r) + "\n" for r in rows)
    )
    samples = [a for r in rows for a in ("--sample", r[0])]
    common = ["--sheet", str(tsv), *samples]
    out = tmp_path / "tiles"
    # without --keep-going the sheet check names the row of the missing file
    spots = '{"patch_um": 56, "target_mpp": 1}'
    r = _cli("tile", *common, "--tiling", spots, "--out-dir", str(out))
    assert r.returncode == 2
    assert "row 5 (missing): slide file" in r.stderr and "missing.tiff does not exist" in r.stderr
    grid = '{"mode": "grid", "patch_um": 56, "target_mpp": 1}'
    r = _cli("tile", *common, "--tiling", grid, "--keep-going", "--out-dir", str(out))
    assert r.returncode == 2, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("histofuse: error:")]
    assert any("sample nompp" in e and "`mpp` column" in e for e in errors)
    assert any("sample broken" in e and "cannot be read by OpenSlide" in e for e in errors)
    assert any("sample missing" in e and "does not exist" in e for e in errors)
    assert "3 of 4 samples failed" in errors[-1]
    assert sorted(p.name for p in out.iterdir()) == ["good.json", "good.parquet", "good.qc.png"]
    stats = json.loads((out / "good.json").read_text())
    assert stats["n_tiles"] == len(read_tiles(out / "good.parquet")[0]) > 0
    assert stats["mpp_source"] == "openslide.mpp" and set(stats["timings"]) >= {"tissue"}
    with Image.open(out / "good.qc.png") as qc:
        assert min(qc.size) >= 400


def test_duplicate_sample_id_names_the_rows(small_cohort, tmp_path):
    sheet = load_samples(small_cohort)
    tsv = tmp_path / "dup.tsv"
    row = f"\tP1\t{sheet['slide'].iloc[0]}\t{sheet['expression'].iloc[0]}\n"
    tsv.write_text("sample_id\tpatient_id\tslide\texpression\n" + "a" + row + "b" + row + "a" + row)
    r = _cli("tile", "--sheet", str(tsv), "--sample", "a", "--out-dir", str(tmp_path / "o"))
    assert r.returncode == 2
    assert r.stderr.strip().endswith("duplicate sample_id 'a' (rows 2, 4)")


def test_spot_patches_with_too_little_tissue_are_dropped_and_counted(small_cohort, tmp_path):
    import anndata

    from histofuse.slides.tiling import tile_sample

    sheet = load_samples(small_cohort)
    slide, expr = sheet["slide"].iloc[0], sheet["expression"].iloc[0]
    adata = anndata.read_h5ad(expr)
    n_on = adata.n_obs
    # add spots on the glass: the slide's corner pixels are background in the tissue mask
    glass = np.array([[20.0, 20.0], [40.0, 20.0]])
    extra = anndata.AnnData(
        X=adata.X[:2], obs=adata.obs.iloc[:2].set_axis(["GLASS-1", "GLASS-2"]), var=adata.var
    )
    extra.obsm["spatial"] = glass
    moved = tmp_path / "with_glass.h5ad"
    anndata.concat([adata, extra], merge="same").write_h5ad(moved)

    # default: every spot of the expression file is kept, as HEST does, with its tissue fraction
    table, meta, _ = tile_sample(
        slide, TilingSpec.from_config({"patch_um": 56.0, "target_mpp": 1.0}), moved
    )
    assert len(table) == n_on + 2 and meta["n_dropped_tissue"] == 0 and meta["min_tissue"] == 0
    glass_rows = table[table["barcode"].str.startswith("GLASS")]
    assert (glass_rows["tissue"] < 0.5).all()
    # a threshold drops the patches with less tissue, counted in the metadata and the stats JSON
    spec = TilingSpec.from_config({"patch_um": 56.0, "target_mpp": 1.0, "spot_min_tissue": 0.5})
    kept, meta, _ = tile_sample(slide, spec, moved)
    expected = table[table["tissue"] >= 0.5]
    assert kept["barcode"].tolist() == expected["barcode"].tolist()
    assert not kept["barcode"].str.startswith("GLASS").any()
    assert meta["n_candidates"] == n_on + 2
    assert meta["n_dropped_tissue"] == len(table) - len(expected) >= 2
    assert meta["tiling"]["spot_min_tissue"] == 0.5
    r = _cli(
        "tile", "--sample", "s", "--slide", slide, "--expression", str(moved),
        "--tiling", '{"patch_um": 56, "target_mpp": 1, "spot_min_tissue": 0.5}',
        "--out", str(tmp_path / "s.parquet"),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    stats = json.loads((tmp_path / "s.json").read_text())
    assert stats["n_dropped_tissue"] == meta["n_dropped_tissue"]
    assert stats["n_tiles"] == len(kept) and stats["min_tissue"] == 0.5


def test_qc_picture_draws_the_tissue_contour_and_every_tile(small_cohort, tmp_path):
    from histofuse.slides.tiling import tile_sample, write_qc

    sheet = load_samples(small_cohort)
    spec = TilingSpec.from_config(
        {"mode": "grid", "patch_um": 64.0, "target_mpp": 1.0, "min_tissue": 0.5}
    )
    table, meta, mask = tile_sample(sheet["slide"].iloc[0], spec)
    write_qc(table, meta, mask, tmp_path / "qc.png")
    rgb = np.asarray(Image.open(tmp_path / "qc.png").convert("RGB")).astype(int)
    blue = np.abs(rgb - (30, 90, 230)).sum(-1) < 10
    green = np.abs(rgb - (20, 200, 60)).sum(-1) < 10
    assert green.sum() > 100  # the tissue contour
    # each tile's outline is drawn where the tile lies (the top-left corner of every box)
    f = rgb.shape[1] / mask.mask.shape[1] / mask.downsample
    for x0, y0, s0 in table[["x0", "y0", "size0"]].to_numpy():
        xs, ys, xe = (int(v) for v in np.rint([x0 * f, y0 * f, (x0 + s0) * f - 1]))
        assert blue[ys, xs:xe].mean() > 0.5 or green[ys, xs:xe].any()
