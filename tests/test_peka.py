"""PEKA: Bone (PEFT MiSS) adapters, distillation from a teacher, tail mode on cached tokens."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from histofuse import settings
from histofuse.errors import HistofuseError
from histofuse.peka import adapters
from histofuse.peka.run import peka_task
from histofuse.peka.teacher import TeacherClassifier, builtin_teacher, read_teacher_file
from histofuse.plan.names import parse

FAST = {
    "teacher": {"source": "builtin", "dim": 16},
    "clusters": 6,
    "classifier": {"hidden": 32, "epochs": 5, "lr": 1.0e-3},
    "r": 32,
    "hidden": 64,
    "tail_blocks": 1,
    "train": {"epochs": 3, "lr": 1.0e-3, "batch_size": 32},
}
TASK = {"genes": {"top_k": 10, "select_on": "all"}, "split": {"scheme": "patient-kfold"}}


def _task(doc):
    return settings.load(settings.Task, "tasks", doc)


def _peka(doc):
    return settings.load(settings.Peka, "peka", doc)


def test_miss_layer_is_the_bone_formula():
    """PEFT's MiSS layer with a non-zero B equals Bone written out; ΔW is Bᵀ tiled over inputs."""
    import peft

    torch.manual_seed(0)
    d_in, d_out, r = 12, 10, 4
    base = nn.Sequential()
    base.add_module("lin", nn.Linear(d_in, d_out))
    w = base.lin.weight.detach().clone()
    b = base.lin.bias.detach().clone()
    model = peft.get_peft_model(base, peft.MissConfig(r=r, target_modules=["lin"]))
    layer = model.base_model.model.lin
    big_b = torch.randn(r, d_out)
    with torch.no_grad():
        layer.miss_block["default"].copy_(big_b)
    x = torch.randn(7, d_in)
    chunks = sum(x[:, j * r : (j + 1) * r] for j in range(d_in // r))
    by_hand = x @ w.T + b + chunks @ big_b
    adapter_path = model(x)
    torch.testing.assert_close(adapter_path, by_hand, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(adapter_path, x @ w.T + b)  # the adapter does something
    merged = model.merge_and_unload()
    delta = merged.lin.weight.detach() - w
    torch.testing.assert_close(delta, big_b.T.repeat(1, d_in // r), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(merged(x), by_hand, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", adapters.METHODS)
def test_every_method_builds_and_trains_only_the_adapter(method):
    st = adapters.build_student(adapters.FeatureProjection(16), method, 8, 4, 8, total_step=10)
    names = [n for n, p in st.named_parameters() if p.requires_grad]
    assert any(n.startswith("translate.") for n in names)
    assert any(n.startswith("body.") for n in names)
    assert not any(n.endswith("proj.base_layer.weight") for n in names)  # frozen projection


def test_zero_initialised_bone_starts_at_the_frozen_outputs():
    from histofuse.encoders.model import create_encoder

    x = torch.randn(5, 24)
    body = adapters.FeatureProjection(24)
    st = adapters.build_student(body, "miss", 8, 3)
    assert torch.equal(st.body(x), x)

    enc = create_encoder("tiny-vit")
    tiles = torch.randint(0, 256, (3, 112, 112, 3), dtype=torch.uint8)
    seen = []
    hook = enc.trunk.blocks[-2].register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    with torch.no_grad():
        full = enc(tiles)
    hook.remove()
    tail = adapters.build_student(adapters.TailModel(enc, 2), "miss", 64, 3).body
    qkv = [n for n, _ in tail.named_modules() if n.endswith("attn.qkv")]
    assert len(qkv) == 2
    with torch.no_grad():
        out = tail(seen[0])
    assert torch.equal(out, full)


def test_distillation_loss_decreases_and_matches_the_released_formula():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(120, 8)).astype(np.float32)
    feats = np.concatenate([emb, rng.normal(size=(120, 8))], axis=1).astype(np.float32)
    clf = TeacherClassifier(n_clusters=5, hidden=32, epochs=20, lr=1e-2, seed=0).fit(emb)
    assert clf.accuracy_ > 0.8
    st = adapters.build_student(adapters.FeatureProjection(16), "miss", 8, 8, 32)
    hist = adapters.train_student(
        st,
        torch.as_tensor(feats),
        torch.as_tensor(emb),
        torch.as_tensor(clf.labels_),
        clf.model_,
        _peka({"train": {"epochs": 15, "lr": 1e-2, "structure_weight": 0.5}}).train,
    )
    assert hist[-1] < 0.5 * hist[0]
    z_s, z_t = torch.randn(4, 5), torch.randn(4, 5)
    y = torch.tensor([0, 1, 2, 3])
    kl = (
        torch.softmax(z_t / 2, 1) * (torch.log_softmax(z_t / 2, 1) - torch.log_softmax(z_s / 2, 1))
    ).sum(1)
    want = 0.5 * 4 * kl.mean() + 0.5 * nn.functional.cross_entropy(z_s, y)
    torch.testing.assert_close(adapters.distill_loss(z_s, z_t, y), want)


def test_builtin_teacher_fits_on_training_spots_only():
    rng = np.random.default_rng(1)
    counts = rng.poisson(3.0, size=(50, 30)).astype(float)
    train = np.arange(30)
    a = builtin_teacher(counts, train, 8, 0)
    changed = counts.copy()
    changed[30:] *= 7  # test spots change: the fitted PCA must not
    b = builtin_teacher(changed, train, 8, 0)
    np.testing.assert_allclose(a[:30], b[:30], rtol=1e-5, atol=1e-5)
    assert a.shape == (50, 8)


def test_teacher_files_by_barcode(tmp_path):
    import anndata

    emb = np.arange(12, dtype=np.float32).reshape(4, 3)
    ad = anndata.AnnData(np.zeros((4, 1)))
    ad.obs_names = ["a", "b", "c", "d"]
    ad.obsm["X_sc"] = emb
    ad.write_h5ad(tmp_path / "s1.h5ad")
    spec = settings.Teacher("file", 64, str(tmp_path / "{sample}.h5ad"), "X_sc")
    got = read_teacher_file(spec, np.array(["s1", "s1"]), np.array(["c", "a"]))
    np.testing.assert_array_equal(got, emb[[2, 0]])
    table = pd.DataFrame({"sample": ["s1", "s2"], "barcode": ["x", "x"], "e0": [1.0, 2.0]})
    table.to_parquet(tmp_path / "all.parquet")
    spec = settings.Teacher("file", 64, str(tmp_path / "all.parquet"), None)
    got = read_teacher_file(spec, np.array(["s2", "s1"]), np.array(["x", "x"]))
    np.testing.assert_array_equal(got[:, 0], [2.0, 1.0])
    with pytest.raises(HistofuseError, match="lack 1 spots"):
        read_teacher_file(spec, np.array(["s3"]), np.array(["x"]))
    with pytest.raises(HistofuseError, match="no obsm key"):
        read_teacher_file(settings.Teacher("file", 64, str(tmp_path / "s1.h5ad"), "nope"), [], [])


def test_feature_set_names():
    assert (parse("peka-tail:uni").mode, parse("peka-tail:uni").encoder) == ("peka-tail", "uni")
    assert (parse("teacher").mode, parse("teacher").encoder) == ("teacher", None)
    with pytest.raises(HistofuseError, match="mode one of"):
        parse("bone:uni")


def test_peka_jobs_cover_sheet_tasks_and_refuse_hest_bench_folders():
    from histofuse.plan.peka import metrics_files

    config = {
        "encoders": ["tiny-vit"],
        "heads": {"hest": {}},
        "tasks": {"spots": {}, "bench": {"hest_bench": "hest-bench"}},
        "peka": {"encoders": ["tiny-vit"], "modes": ["peka"], "heads": ["hest"]},
    }
    assert metrics_files(config) == ["results/metrics/spots/peka:tiny-vit/hest.parquet"]
    config["peka"]["tasks"] = ["bench"]
    with pytest.raises(HistofuseError, match=r"HEST-Bench task\(s\) \['bench'\]"):
        metrics_files(config)
    config["peka"]["tasks"] = ["nope"]
    with pytest.raises(HistofuseError, match="peka.tasks` names \\['nope'\\]"):
        metrics_files(config)


@pytest.fixture(scope="module")
def vit_store(small_tiles, tmp_path_factory):
    from histofuse.embed import embed_shard

    out = tmp_path_factory.mktemp("peka-features") / "tiny-vit" / "0000.zarr"
    embed_shard(list(small_tiles.values()), "tiny-vit", out, batch_size=32, device="cpu")
    return out


@pytest.mark.parametrize(
    "name", ["peka:tiny-vit", "image+peka:tiny-vit", "teacher", "hra:tiny-vit"]
)
def test_peka_task_writes_report_rows(name, vit_store, small_cohort, tmp_path):
    import torch

    threads = torch.get_num_threads()
    m = peka_task(
        "t", _task(TASK), small_cohort, name, "hest", {"cap_components": True}, _peka(FAST),
        tmp_path / "m.parquet", tmp_path / "p.parquet", stores=[vit_store],
    )  # fmt: skip
    assert torch.get_num_threads() == threads  # one thread while training, then restored
    assert set(m["features"]) == {name}
    pooled = m[m["protocol"] == "hest-pooled"]
    assert pooled["fold"].nunique() == 2
    assert pooled["pearson"].between(-1, 1).all()
    meta = pd.read_parquet(tmp_path / "m.parquet")
    pd.testing.assert_frame_equal(meta, m)
    pred = pd.read_parquet(tmp_path / "p.parquet")
    assert not pred.duplicated(["sample", "barcode"]).any()
    if name == "teacher":  # the teacher sees expression itself: an upper bound
        assert pooled["pearson"].mean() > 0.5


def test_tail_mode_reads_only_the_token_cache(tmp_path):
    """Tokens cached once; then the slides are removed and tail training still runs."""
    import json

    import pyarrow.parquet as pq

    from histofuse.cache import read_provenance
    from histofuse.demo import write_demo_cohort
    from histofuse.peka.tokens import embed_tokens
    from histofuse.samples import load_samples
    from histofuse.slides.spec import TilingSpec
    from histofuse.slides.tiling import tile_spots, write_tiles

    sheet_path = write_demo_cohort(
        tmp_path / "c", seed=5, n_patients=2, slides_per_patient=1, n_genes=20,
        width_um=600, height_um=500,
    )  # fmt: skip
    sheet = load_samples(sheet_path)
    spec = TilingSpec.from_config({"patch_um": 56.0, "target_mpp": 1.0})
    tiles = []
    for sample, row in sheet.iterrows():
        table, meta = tile_spots(row["slide"], row["expression"], spec)
        meta["sample"] = sample
        tiles.append(tmp_path / f"{sample}.parquet")
        write_tiles(table, meta, tiles[-1])
    store = tmp_path / "tokens" / "tiny-vit" / "0000.zarr"
    prov = embed_tokens(tiles, "tiny-vit", store, blocks=2, batch_size=16)
    info = read_provenance(store)["tokens"]
    assert info == prov["tokens"]
    assert info["start_block"] == 2 and info["n_tokens"] == 50 and info["dim"] == 192
    assert info["bytes_per_tile"] == 50 * 192 * 2  # float16
    for slide in sheet["slide"]:
        Path(slide).unlink()  # nothing after this point can read a tile
    m = peka_task(
        "t", _task({**TASK, "split": {"scheme": "leave-one-patient-out"}}), sheet_path,
        "peka-tail:tiny-vit", "ridge", {}, _peka({**FAST, "tail_blocks": 2}),
        tmp_path / "m.parquet", tmp_path / "p.parquet", token_stores=[store],
    )  # fmt: skip
    assert set(m["features"]) == {"peka-tail:tiny-vit"}
    meta = json.loads(pq.read_schema(tmp_path / "m.parquet").metadata[b"histofuse"])
    assert meta["tokens"]["bytes_per_tile"] == 19200
    folds = meta["peka"]["folds"]
    assert meta["peka"]["method"] == "miss" and meta["peka"]["site"] == "tail"
    # trainable: Bone's B (r × 3·192) in both blocks plus the translate MLP
    for f in folds.values():
        t = f["teacher_dim"]
        translate = 192 * 64 + 64 + 64 * t + t
        assert f["trainable_params"] == 2 * 32 * 576 + translate
    assert all(len(f["loss"]) == 3 for f in folds.values())


def test_report_never_takes_a_learned_row_as_reference_or_fusion():
    from histofuse.report.tables import best_singles, relative_gains

    summary = pd.DataFrame(
        {
            "task": "t",
            "head": "hest",
            "protocol": "hest-pooled",
            "features": ["a", "b", "a+b", "teacher", "peka:a", "image+peka:a"],
            "pearson_mean": [0.3, 0.4, 0.45, 0.9, 0.5, 0.35],
        }
    )
    best = best_singles(summary)
    assert list(best["reference"]) == ["b"]
    gains = relative_gains(summary)
    assert list(gains["features"]) == ["a+b"]
    assert gains["best_single"].tolist() == ["b"]
