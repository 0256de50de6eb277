import json

import pytest
import torch

from histofuse.encoders.model import (
    build_trunk,
    create_encoder,
    sha256_file,
)
from histofuse.encoders.registry import EncoderSpec, get_spec, list_encoders, register_encoder
from histofuse.errors import HistofuseError

TINY = ["tiny-vit", "tiny-vit-mean", "tiny-cnn"]


def test_registry_lists_test_encoders():
    names = list_encoders()
    assert set(TINY) <= set(names)
    assert names == sorted(names)


def test_unknown_encoder_names_known_ones():
    with pytest.raises(HistofuseError, match="unknown encoder 'nope'.*tiny-vit"):
        get_spec("nope")


def test_duplicate_registration_rejected():
    with pytest.raises(ValueError, match="registered twice"):
        register_encoder("tiny-vit")(lambda: get_spec("tiny-vit"))


def test_bad_pooling_rejected():
    with pytest.raises(ValueError, match="pooling"):
        EncoderSpec(name="x", arch="resnet10t", embed_dim=1, pooling="max")


@pytest.mark.parametrize("name", TINY)
def test_forward_shape_and_determinism(name):
    spec = get_spec(name)
    a, b = create_encoder(name), create_encoder(name)
    assert a.weights_sha256 == b.weights_sha256
    x = torch.randint(0, 256, (3, 80, 80, 3), dtype=torch.uint8)  # resized to input_size inside
    with torch.inference_mode():
        ya, yb = a(x), b(x)
    assert ya.shape == (3, spec.embed_dim)
    assert torch.equal(ya, yb)
    assert torch.isfinite(ya).all()
    assert not any(p.requires_grad for p in a.parameters())


def test_pooling_is_part_of_the_output():
    x = torch.randint(0, 256, (2, 112, 112, 3), dtype=torch.uint8)
    cls, mean = create_encoder("tiny-vit"), create_encoder("tiny-vit-mean")
    assert cls.weights_sha256 == mean.weights_sha256  # same network ...
    with torch.inference_mode():
        tokens = cls.trunk.forward_features(cls.preprocess(x))
        assert torch.allclose(cls(x), tokens[:, 0])
        assert torch.allclose(mean(x), tokens[:, cls.trunk.num_prefix_tokens :].mean(1))
    assert get_spec("tiny-vit").fingerprint() != get_spec("tiny-vit-mean").fingerprint()


def test_preprocess_normalises_on_device():
    enc = create_encoder("tiny-vit")
    white = torch.full((1, 112, 112, 3), 255, dtype=torch.uint8)
    x = enc.preprocess(white)
    expected = (1 - torch.tensor(enc.spec.mean)) / torch.tensor(enc.spec.std)
    assert torch.allclose(x[0, :, 5, 5], expected, atol=1e-5)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_weights_from_a_local_file(tmp_path, suffix):
    torch.manual_seed(123)
    trunk = build_trunk(get_spec("tiny-cnn"))
    path = tmp_path / f"w{suffix}"
    state = {f"module.{k}": v for k, v in trunk.state_dict().items()}  # a wrapped checkpoint
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save({"state_dict": state}, path)
    enc = create_encoder("tiny-cnn", weights=path)
    assert enc.weights_sha256 == sha256_file(path)
    assert enc.weights_sha256 != create_encoder("tiny-cnn").weights_sha256
    for k, v in trunk.state_dict().items():
        assert torch.equal(enc.trunk.state_dict()[k], v)


def test_weights_that_do_not_fit_are_rejected(tmp_path):
    path = tmp_path / "vit.pth"
    torch.save(build_trunk(get_spec("tiny-vit")).state_dict(), path)
    with pytest.raises(HistofuseError, match="does not fit encoder 'tiny-cnn'"):
        create_encoder("tiny-cnn", weights=path)


def test_missing_weights_file_says_where(tmp_path):
    with pytest.raises(HistofuseError, match="no file at .*missing.pth.*weights:"):
        create_encoder("tiny-cnn", weights=tmp_path / "missing.pth")


def test_meta_device_counts_parameters_without_memory():
    spec = get_spec("tiny-cnn")
    meta = build_trunk(spec, device="meta")
    assert all(p.is_meta for p in meta.parameters())
    real = build_trunk(spec)
    assert sum(p.numel() for p in meta.parameters()) == sum(p.numel() for p in real.parameters())


def test_spec_round_trips_to_json():
    d = get_spec("tiny-vit").to_dict()
    assert json.loads(json.dumps(d))["arch"] == "vit_tiny_patch16_224"


@pytest.fixture(scope="module")
def resnet50_checkpoint(tmp_path_factory):
    """A whole torchvision ResNet-50 (as published: layer4 and the 1000-class fc included)."""
    import torchvision

    torch.manual_seed(7)
    net = torchvision.models.resnet50(weights=None).eval()
    for m in net.modules():  # non-trivial running statistics, so BN buffers must load too
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("tv") / "resnet50.pth"
    torch.save(net.state_dict(), path)
    return net, path


def test_a_truncated_encoder_takes_the_whole_published_checkpoint(resnet50_checkpoint, caplog):
    """resnet50-trunc is CLAM's ResNet-50 through layer3, average pooled (1024-d)."""
    net, path = resnet50_checkpoint
    with caplog.at_level("INFO", logger="histofuse.encoders.model"):
        enc = create_encoder("resnet50-trunc", weights=path)
    assert "(fc.*, layer4.*)" in caplog.text
    n_dropped = sum(k.startswith(("layer4.", "fc.")) for k in net.state_dict())
    assert f"dropped {n_dropped} keys" in caplog.text
    assert enc.weights_sha256 == sha256_file(path)

    tiles = torch.randint(
        0, 256, (2, 224, 224, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    x = enc.preprocess(tiles)
    with torch.no_grad():
        h = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        ref = net.layer3(net.layer2(net.layer1(h))).mean(dim=(2, 3))  # the torchvision net's own
        got = enc(tiles)
    assert got.shape == (2, 1024)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)


def test_a_truncated_encoder_still_refuses_keys_of_no_layer(resnet50_checkpoint, tmp_path):
    net, _ = resnet50_checkpoint
    path = tmp_path / "extra.pth"
    torch.save({**net.state_dict(), "head.proj.weight": torch.zeros(3, 3)}, path)
    with pytest.raises(HistofuseError, match=r"1 unexpected keys \(e.g. \['head.proj.weight'\]\)"):
        create_encoder("resnet50-trunc", weights=path)
