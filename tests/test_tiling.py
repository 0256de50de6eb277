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
        w, h = s.dimensions
    img = np.full((h, w, 3), 230, dtype=np.uint8)
    tifffile.imwrite(slide, img, tile=(256, 256), photometric="rgb", compression="jpeg")
    spec = TilingSpec(patch_um=56.0, target_mpp=1.0)
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
    adata.obsm["spatial"] = adata.obsm["spatial"] * 100
    moved = tmp_path / "moved.h5ad"
    adata.write_h5ad(moved)
    with pytest.raises(HistofuseError, match="spot centres lie outside slide"):
        tile_spots(sheet["slide"].iloc[0], moved, TilingSpec())


def test_tiles_file_round_trip_and_errors(tmp_path, small_tiles):
    table, meta = read_tiles(next(iter(small_tiles.values())))
    write_tiles(table, meta, tmp_path / "t.parquet")
    t2, m2 = read_tiles(tmp_path / "t.parquet")
    assert m2 == meta and t2.equals(table)
    table.to_parquet(tmp_path / "plain.parquet")
    with pytest.raises(HistofuseError, match="no histofuse metadata"):
        read_tiles(tmp_path / "plain.parquet")
