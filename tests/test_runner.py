"""The fold runner: a sample recorded as failed at tiling is left out by fit, PEKA and bulk alike.

The failed sample's tile job output is the empty tiles table that ``histofuse tile --on-error
record`` writes; embedding the shard records it in the store's provenance (``failed_samples``),
and every stage must leave it out, finish, and name it in its metrics file's metadata.
"""

from __future__ import annotations

import json

import pandas as pd
import pyarrow.parquet as pq
import pytest

from histofuse import settings
from histofuse.report.missing import missing_table

FAILED = "P1-S2"
REASON = "slide cannot be read (truncated TIFF)"
TASK = {"genes": {"top_k": 6, "select_on": "all"}, "split": {"scheme": "patient-kfold"}}
PEKA = {
    "teacher": {"dim": 8},
    "clusters": 4,
    "classifier": {"hidden": 16, "epochs": 2},
    "r": 16,
    "hidden": 16,
    "train": {"epochs": 2, "batch_size": 32},
}


@pytest.fixture(scope="module")
def failed_store(small_cohort, small_tiles, tmp_path_factory):
    """A tiny-vit store of the small cohort's shard in which ``FAILED`` was not tiled."""
    from histofuse.cache import read_provenance
    from histofuse.embed import embed_shard
    from histofuse.samples import load_samples
    from histofuse.slides.failures import write_failure
    from histofuse.slides.spec import TilingSpec

    out = tmp_path_factory.mktemp("failed")
    slide = load_samples(small_cohort).at[FAILED, "slide"]
    tiles = out / "tiles" / f"{FAILED}.parquet"
    spec = TilingSpec.from_config({"patch_um": 56.0, "target_mpp": 1.0})  # as small_tiles
    write_failure(FAILED, slide, spec, REASON, tiles, out / "qc.png", out / "stats.json")
    shard = [tiles if s == FAILED else p for s, p in sorted(small_tiles.items())]
    store = out / "features" / "tiny-vit" / "0000.zarr"
    embed_shard(shard, "tiny-vit", store, batch_size=32, device="cpu")
    assert read_provenance(store)["failed_samples"] == {FAILED: REASON}
    return store


def _meta(path) -> dict:
    return json.loads(pq.read_schema(path).metadata[b"histofuse"])


def _left_out(metrics_path, predictions_path, sample_column="sample") -> None:
    """The failed sample is named in the metadata and absent from metrics and predictions."""
    assert _meta(metrics_path)["missing_samples"] == {FAILED: f"not tiled: {REASON}"}
    assert FAILED not in set(pd.read_parquet(metrics_path)["sample"])
    assert FAILED not in set(pd.read_parquet(predictions_path)[sample_column])
    missing = missing_table([metrics_path])
    assert missing[["sample", "barcode"]].values.tolist() == [[FAILED, ""]]


def test_fit_leaves_out_a_sample_failed_at_tiling(failed_store, small_cohort, tmp_path):
    from histofuse.fit import fit_task

    m = fit_task(
        "t", settings.load(settings.Task, "tasks", TASK), small_cohort, [failed_store],
        "tiny-vit", "ridge", {}, tmp_path / "m.parquet", tmp_path / "p.parquet",
    )  # fmt: skip
    assert set(m.loc[m["protocol"] == "per-sample", "sample"]) == {"P1-S1", "P2-S1", "P2-S2"}
    _left_out(tmp_path / "m.parquet", tmp_path / "p.parquet")


def test_peka_leaves_out_a_sample_failed_at_tiling(failed_store, small_cohort, tmp_path):
    from histofuse.peka.run import peka_task

    m = peka_task(
        "t", settings.load(settings.Task, "tasks", TASK), small_cohort, "peka:tiny-vit",
        "ridge", {}, settings.load(settings.Peka, "peka", PEKA),
        tmp_path / "m.parquet", tmp_path / "p.parquet", stores=[failed_store],
    )  # fmt: skip
    assert set(m.loc[m["protocol"] == "per-sample", "sample"]) == {"P1-S1", "P2-S1", "P2-S2"}
    assert m["fold"].nunique() == 2
    _left_out(tmp_path / "m.parquet", tmp_path / "p.parquet")


def test_bulk_leaves_out_a_slide_failed_at_tiling(failed_store, small_cohort, tmp_path):
    from histofuse.bulk.evaluate import fit_bulk_task
    from histofuse.data.expression import read_counts
    from histofuse.samples import load_samples

    sheet = load_samples(small_cohort)
    table = pd.DataFrame({s: read_counts(p).sum(axis=0) for s, p in sheet["expression"].items()})
    table.T.rename_axis("sample_id").to_csv(tmp_path / "bulk.csv")  # a row for every slide
    doc = {
        "table": str(tmp_path / "bulk.csv"),
        "genes": {"top_k": 4, "select_on": "all"},
        "split": {"scheme": "leave-one-case-out", "n_repeats": 1, "scoring": "pooled"},
    }
    fit_bulk_task(
        "b", settings.load(settings.BulkTask, "bulk", doc), small_cohort, "tiny-vit", "mean",
        "mlp", {"epochs": 2, "hidden": 8}, tmp_path / "m.parquet", tmp_path / "p.parquet",
        stores=[failed_store],
    )  # fmt: skip
    pred = pd.read_parquet(tmp_path / "p.parquet").set_index("case")
    assert pred["n_slides"].to_dict() == {"P1": 1, "P2": 2}  # P1's other slide is left out
    assert _meta(tmp_path / "m.parquet")["slides"] == 3
    _left_out(tmp_path / "m.parquet", tmp_path / "p.parquet", sample_column="case")
