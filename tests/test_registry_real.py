"""The registered foundation models: architecture, output dim and published parameter count."""

import json

import pytest
import torch

from histofuse.cli import main
from histofuse.encoders.model import Encoder, build_trunk, create_encoder, remap_hf_vit
from histofuse.encoders.registry import get_spec, list_encoders
from histofuse.errors import HistofuseError

REAL = [n for n in list_encoders() if get_spec(n).weights != "random"]
SMALL = ["phikon", "hibou-b", "h0-mini", "kaiko-vitb16", "ctranspath", "resnet50-trunc"]
REQUIRED = {
    "uni",
    "uni2-h",
    "conch-v1.5-trunk",
    "virchow",
    "virchow2",
    "virchow2-cls",
    "gigapath",
    "h-optimus-0",
    "h-optimus-1",
    "h0-mini",
    "phikon",
    "phikon-v2",
    "hibou-b",
    "hibou-l",
    "kaiko-vitb16",
    "midnight12k",
    "ctranspath",
    "resnet50-trunc",
}


def test_registry_holds_the_required_models():
    assert set(REAL) >= REQUIRED


@pytest.mark.parametrize("name", REAL)
def test_architecture_matches_published_count_and_dim(name):
    spec = get_spec(name)
    trunk = build_trunk(spec, device="meta")
    n = sum(p.numel() for p in trunk.parameters())
    assert spec.n_params is not None
    assert abs(n / spec.n_params - 1) <= 0.005, f"{name}: built {n:,}, published {spec.n_params:,}"
    enc = Encoder(spec, trunk, "meta").to("meta")
    x = torch.zeros(2, spec.input_size, spec.input_size, 3, dtype=torch.uint8, device="meta")
    assert tuple(enc(x).shape) == (2, spec.embed_dim)


def _random_state(spec):
    """Small random weights for an architecture, without timm's (slow) initialisation."""
    torch.manual_seed(0)
    trunk = build_trunk(spec, device="meta").to_empty(device="cpu")
    state = {
        k: torch.randn_like(v, dtype=torch.float32).mul_(0.02).to(v.dtype)
        for k, v in trunk.state_dict().items()
    }
    return {k: v.abs() + 1 if k.endswith("running_var") else v for k, v in state.items()}


@pytest.mark.parametrize("name", SMALL)
def test_small_models_embed_a_fixture_tile(name, tmp_path):
    spec = get_spec(name)
    state = _random_state(spec)
    path = tmp_path / "w.pth"
    torch.save(state, path)
    enc = create_encoder(name, weights=path)
    tile = torch.randint(0, 256, (1, 256, 256, 3), dtype=torch.uint8)
    with torch.inference_mode():
        y = enc(tile)
    assert y.shape == (1, spec.embed_dim)
    assert torch.isfinite(y).all()


def test_pooling_variants_are_separate_ids():
    a, b = get_spec("virchow2"), get_spec("virchow2-cls")
    assert (a.pooling, a.embed_dim, b.pooling, b.embed_dim) == ("cls+mean", 2560, "cls", 1280)
    assert a.fingerprint() != b.fingerprint()


def test_published_weights_missing_say_where_to_put_them():
    with pytest.raises(HistofuseError, match="needs its weights.*`weights: \\{phikon:"):
        create_encoder("phikon")


def _hf_from_timm(state):
    """Writes a timm ViT state dict in Hugging Face ``ViTModel`` naming, as Phikon is published."""
    hf = {}
    names = {
        "norm1": "layernorm_before",
        "norm2": "layernorm_after",
        "attn.proj": "attention.output.dense",
        "mlp.fc1": "intermediate.dense",
        "mlp.fc2": "output.dense",
    }
    for k, v in state.items():
        if k == "cls_token":
            hf["embeddings.cls_token"] = v
        elif k == "pos_embed":
            hf["embeddings.position_embeddings"] = v
        elif k.startswith("patch_embed.proj."):
            hf["embeddings.patch_embeddings.projection." + k.rsplit(".", 1)[1]] = v
        elif k.startswith("norm."):
            hf["layernorm." + k.rsplit(".", 1)[1]] = v
        elif ".attn.qkv." in k:
            block, kind = k.split(".")[1], k.rsplit(".", 1)[1]
            for part, t in zip(("query", "key", "value"), v.chunk(3, dim=0), strict=True):
                hf[f"encoder.layer.{block}.attention.attention.{part}.{kind}"] = t.clone()
        else:
            _, block, rest = k.split(".", 2)
            name, kind = rest.rsplit(".", 1)
            hf[f"encoder.layer.{block}.{names[name]}.{kind}"] = v
    hf["pooler.dense.weight"] = torch.zeros(1)
    return hf


def test_hf_vit_checkpoint_keys_are_remapped(tmp_path):
    from safetensors.torch import save_file

    spec = get_spec("phikon")
    state = _random_state(spec)
    trunk = build_trunk(spec, device="meta")
    trunk.load_state_dict(state, assign=True)
    hf = _hf_from_timm(state)
    assert "blocks.0.attn.qkv.weight" not in hf
    mapped = remap_hf_vit(hf)
    assert set(mapped) == set(trunk.state_dict())
    path = tmp_path / "model.safetensors"
    save_file({f"vit.{k}": v.contiguous() for k, v in hf.items()}, str(path))
    enc = create_encoder("phikon", weights=path)
    x = torch.randint(0, 256, (1, 224, 224, 3), dtype=torch.uint8)
    with torch.inference_mode():
        ref = Encoder(spec, trunk.eval(), "x")(x)
        assert torch.allclose(enc(x), ref, atol=1e-5)


def test_encoders_json_counts_on_meta(capsys):
    assert main(["encoders", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    keys = {"name", "embed_dim", "n_params", "input_size", "mean", "std", "pooling", "weights"}
    assert all(set(r) == keys for r in rows.values())
    assert rows["uni"]["n_params"] == 303_350_784  # counted, not the published 303.4M
    assert rows["tiny-vit"]["n_params"] == 1_937_280
    assert rows["virchow2"]["embed_dim"] == 2560
