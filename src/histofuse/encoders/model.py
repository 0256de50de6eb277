"""Building encoders from their specs: ``create_encoder`` is the one entry point.

Weights come from a local file (safetensors or a torch pickle), from a hub id when the machine is
online (``hf-hub:<id>``), or, for test encoders only, from a seeded random initialisation. The
sha256 of what was loaded is recorded in every feature store's provenance.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from torch import nn

from histofuse.digests import sha256_file
from histofuse.encoders.layers import resolve_kwargs
from histofuse.encoders.registry import EncoderSpec, get_spec
from histofuse.errors import HistofuseError

_STRIP_PREFIXES = ("module.", "model.", "trunk.", "backbone.")
_TRUNCATION_KWARGS = ("features_only", "out_indices", "feature_cls", "feature_cfg")

logger = logging.getLogger(__name__)


def sha256_state_dict(module: nn.Module) -> str:
    """Returns a sha256 over a module's parameter names and bytes (for weights made in memory)."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """Reads a checkpoint file into a flat state dict with common wrapper prefixes removed.

    Args:
        path: A ``.safetensors`` file, or a ``.pth``/``.pt``/``.bin`` torch checkpoint (a state
            dict, or a dict holding one under ``state_dict`` or ``model``).

    Raises:
        HistofuseError: If the file is missing or is not a checkpoint.
    """
    if not path.is_file():
        raise HistofuseError(
            f"weights file {path} does not exist; put the checkpoint there or fix the path "
            "under `weights:` in the config"
        )
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise HistofuseError(
            f"weights file {path} could not be read as a checkpoint ({_load_failure(exc)}); "
            "give a .safetensors file or a state dict saved with torch.save, re-downloaded if "
            "it is truncated"
        ) from exc
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise HistofuseError(f"weights file {path} holds no state dict")
    cleaned = {}
    for k, v in state.items():
        for prefix in _STRIP_PREFIXES:
            if k.startswith(prefix):
                k = k[len(prefix) :]
        cleaned[k] = v
    return cleaned


def _load_failure(exc: Exception) -> str:
    """Why a checkpoint could not be read, in one short line.

    torch's own message for a pickle that holds more than tensors advises loading it with
    ``weights_only=False``, which runs arbitrary code from the file; histofuse never does, so
    that message is replaced.
    """
    text = " ".join(str(exc).split())
    if "weights_only" in text or "WeightsUnpickler" in text:
        return "not a torch file of tensors only: corrupt, or it holds pickled objects"
    if len(text) < 8:  # e.g. pickle's bare opcode number for garbage bytes
        return f"{type(exc).__name__}: not a checkpoint file"
    return f"{type(exc).__name__}: {text[:200]}"


def _shape(value: object) -> tuple[int, ...] | None:
    """The shape of a checkpoint entry (None for an entry that is not a tensor)."""
    shape = getattr(value, "shape", None)
    return tuple(shape) if shape is not None else None


def _check_shapes(state: dict[str, torch.Tensor], trunk: nn.Module, path: Path, name: str) -> None:
    """Refuses a checkpoint whose tensors have other shapes than the encoder's.

    Raises:
        HistofuseError: Naming the first mismatched key and both shapes.
    """
    own = trunk.state_dict()
    wrong = [k for k, v in state.items() if k in own and _shape(v) != tuple(own[k].shape)]
    if wrong:
        key = wrong[0]
        spec = get_spec(name)
        raise HistofuseError(
            f"weights file {path} does not fit encoder {name!r} ({spec.arch}): key {key!r} has "
            f"shape {_shape(state[key])} in the file but {tuple(own[key].shape)} in the "
            f"encoder ({len(wrong)} keys differ); the encoder named in the config must match "
            "the checkpoint's architecture (see `histofuse encoders`)"
        )


_HF_BLOCK = {
    "attention.output.dense": "attn.proj",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
    "layernorm_before": "norm1",
    "layernorm_after": "norm2",
    "norm1": "norm1",
    "norm2": "norm2",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
    "mlp.weights_in": "mlp.fc1",
    "mlp.weights_out": "mlp.fc2",
    "layer_scale1.lambda1": "ls1.gamma",
    "layer_scale2.lambda1": "ls2.gamma",
}


_HF_TOP = {
    "embeddings.cls_token": "cls_token",
    "embeddings.register_tokens": "reg_token",
    "embeddings.position_embeddings": "pos_embed",
}
_HF_TOP_PREFIX = {
    "embeddings.patch_embeddings.projection.": "patch_embed.proj.",
    "layernorm.": "norm.",
}


def remap_hf_vit(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Maps Hugging Face ``ViTModel``/``Dinov2Model`` keys to timm ``VisionTransformer`` keys.

    Separate query/key/value projections are concatenated into timm's fused ``qkv``; the mask
    token and the pooler, which timm's trunk does not have, are dropped. Keys already in timm
    form pass through unchanged.

    Args:
        state: A state dict with HF keys (an optional ``vit.``/``dinov2.`` prefix is removed).

    Returns:
        The state dict with timm keys.
    """
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        for prefix in ("vit.", "dinov2."):
            key = key.removeprefix(prefix)
        if key.startswith(("pooler.", "embeddings.mask_token")):
            continue
        if not key.startswith("encoder.layer."):
            out[_hf_top_key(key)] = value
            continue
        block, part, kind = _hf_qkv_part(key)
        if part is None:
            out[_hf_block_key(key)] = value
        else:
            qkv.setdefault((block, kind), {})[part] = value
    for (block, kind), parts in qkv.items():
        out[f"blocks.{block}.attn.qkv.{kind}"] = torch.cat(
            [parts["query"], parts["key"], parts["value"]], dim=0
        )
    return out


def _hf_top_key(key: str) -> str:
    """The timm key of an HF parameter outside the blocks (unchanged when not an HF name)."""
    if key in _HF_TOP:
        return _HF_TOP[key]
    for hf, timm_prefix in _HF_TOP_PREFIX.items():
        if key.startswith(hf):
            return timm_prefix + key.rsplit(".", 1)[1]
    return key


def _hf_qkv_part(key: str) -> tuple[int, str | None, str]:
    """(block, ``query``/``key``/``value`` or None, ``weight``/``bias``) of an HF block key."""
    idx, rest = key.removeprefix("encoder.layer.").split(".", 1)
    name, kind = rest.rsplit(".", 1)
    part = name.rsplit(".", 1)[1] if name.startswith("attention.attention.") else None
    return int(idx), part, kind


def _hf_block_key(key: str) -> str:
    """The timm key of an HF block parameter other than query/key/value."""
    idx, rest = key.removeprefix("encoder.layer.").split(".", 1)
    name, kind = rest.rsplit(".", 1)
    if name in _HF_BLOCK:
        return f"blocks.{int(idx)}.{_HF_BLOCK[name]}.{kind}"
    if rest in _HF_BLOCK:
        return f"blocks.{int(idx)}.{_HF_BLOCK[rest]}"
    return key


KEY_MAPPERS = {"hf-vit": remap_hf_vit}


class Encoder(nn.Module):
    """A timm trunk with its input transform and pooling.

    ``forward`` takes uint8 tiles (B, H, W, 3) on the model's device and returns pooled features
    (B, embed_dim): the uint8 → float conversion, resize and normalisation run on the device.

    Attributes:
        spec: The encoder spec.
        trunk: The timm model (``num_classes=0``).
        weights_sha256: sha256 of the loaded weights (file bytes, or state dict bytes for
            seeded random init).
    """

    def __init__(self, spec: EncoderSpec, trunk: nn.Module, weights_sha256: str) -> None:
        super().__init__()
        self.spec = spec
        self.trunk = trunk
        self.weights_sha256 = weights_sha256
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1), persistent=False)

    def preprocess(self, tiles: torch.Tensor) -> torch.Tensor:
        """Converts uint8 (B, H, W, 3) tiles to normalised float (B, 3, S, S) inputs."""
        x = tiles.permute(0, 3, 1, 2).float().div_(255.0)
        size = self.spec.input_size
        resize = self.spec.resize or size
        if x.shape[-2:] != (resize, resize):
            x = F.interpolate(
                x,
                size=(resize, resize),
                mode=self.spec.interpolation,
                antialias=True,
                align_corners=False,
            ).clamp_(0.0, 1.0)
        if resize != size:
            top = (resize - size) // 2
            x = x[:, :, top : top + size, top : top + size]
        return (x - self.mean) / self.std

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Runs the trunk on normalised inputs; returns tokens or the last feature map."""
        if hasattr(self.trunk, "forward_features"):
            return self.trunk.forward_features(x)
        out = self.trunk(x)  # timm features_only nets return a list of feature maps
        return out[-1] if isinstance(out, list | tuple) else out

    def pool(self, feats: torch.Tensor) -> torch.Tensor:
        """Pools ``forward_features`` output into one vector per tile."""
        pooling = self.spec.pooling
        if pooling == "avg":
            if feats.ndim == 4:  # NCHW maps (CNNs) or NHWC maps (Swin)
                nhwc = feats.shape[-1] == self.spec.embed_dim and feats.shape[1] != feats.shape[-1]
                return feats.mean(dim=(1, 2)) if nhwc else feats.mean(dim=(2, 3))
            return feats.mean(dim=1)
        n_prefix = int(getattr(self.trunk, "num_prefix_tokens", 1))
        cls = feats[:, 0]
        mean = feats[:, n_prefix:].mean(dim=1)
        if pooling == "cls":
            return cls
        if pooling == "mean":
            return mean
        return torch.cat([cls, mean], dim=1)

    def forward(self, tiles: torch.Tensor) -> torch.Tensor:
        """Embeds a batch of uint8 (B, H, W, 3) tiles into (B, embed_dim) features."""
        return self.pool(self.features(self.preprocess(tiles)))


def build_trunk(spec: EncoderSpec, device: str | torch.device = "cpu") -> nn.Module:
    """Builds the timm architecture of a spec without loading weights.

    Args:
        spec: The encoder spec.
        device: Where to allocate parameters; ``"meta"`` builds the architecture without memory,
            which is how parameter counts are checked for encoders whose weights are not here.
    """
    kwargs = resolve_kwargs(spec.kwargs)
    with torch.device(device):
        return timm.create_model(spec.arch, pretrained=False, num_classes=0, **kwargs)


def _removed_layer_keys(spec: EncoderSpec, trunk: nn.Module) -> set[str]:
    """The parameter names of the layers a truncated encoder leaves out of its architecture.

    A truncated encoder (``features_only`` in its timm kwargs, e.g. ResNet-50 through layer3)
    is built without the later layers and the classifier, while its published checkpoint holds
    the whole network. These are the names of the whole architecture (with timm's default
    classifier) that the trunk does not have; empty for an encoder that is not truncated.
    """
    if not spec.kwargs.get("features_only"):
        return set()
    kwargs = {k: v for k, v in resolve_kwargs(spec.kwargs).items() if k not in _TRUNCATION_KWARGS}
    with torch.device("meta"):
        whole = timm.create_model(spec.arch, pretrained=False, **kwargs)
    return set(whole.state_dict()) - set(trunk.state_dict())


def _drop_removed_layers(
    state: dict[str, torch.Tensor], spec: EncoderSpec, trunk: nn.Module, path: Path
) -> dict[str, torch.Tensor]:
    """Drops a full checkpoint's keys of the layers a truncated encoder removes, and logs them.

    The hub path does the same: timm loads the whole published network strictly, then keeps
    the layers up to the last feature index. Keys of no layer of the architecture stay, so
    that the strict check still refuses them.
    """
    removed = _removed_layer_keys(spec, trunk)
    dropped = sorted(k for k in state if k in removed)
    if dropped:
        layers = sorted({k.split(".", 1)[0] + ".*" for k in dropped})
        logger.info(
            "weights file %s: dropped %d keys of the layers encoder %r is truncated before (%s)",
            path,
            len(dropped),
            spec.name,
            ", ".join(layers),
        )
    return {k: v for k, v in state.items() if k not in removed}


def _trunk_from_file(spec: EncoderSpec, path: Path) -> nn.Module:
    """Builds a spec's trunk holding the tensors of a checkpoint file.

    Raises:
        HistofuseError: If the file is not a checkpoint, or its keys or shapes do not fit.
    """
    name = spec.name
    state = load_state_dict_file(path)
    if spec.key_map is not None:
        state = KEY_MAPPERS[spec.key_map](state)
    # Build without memory and take the checkpoint's tensors: no random init of a large
    # model just to overwrite it. Models with computed buffers (Swin's relative position
    # index) are built for real instead.
    trunk = build_trunk(spec, device="meta")
    if any(b.is_meta for n, b in trunk.named_buffers() if n not in trunk.state_dict()):
        trunk = build_trunk(spec)
    state = _drop_removed_layers(state, spec, trunk, path)
    _check_shapes(state, trunk, path, name)
    missing, unexpected = trunk.load_state_dict(state, strict=False, assign=True)
    if missing or unexpected:
        raise HistofuseError(
            f"weights file {path} does not fit encoder {name!r} ({spec.arch}): "
            f"{len(missing)} missing keys (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})"
        )
    return trunk


def create_encoder(
    name: str, weights: str | Path | None = None, device: str | torch.device = "cpu"
) -> Encoder:
    """Creates a registered encoder with its weights, in eval mode.

    Args:
        name: Registry id (see ``histofuse encoders``).
        weights: A local checkpoint file, ``hf-hub:<id>`` (needs the network), or None for the
            spec's default. Encoders whose default is ``random`` are initialised from their seed;
            any other encoder needs weights.
        device: Device to put the model on.

    Returns:
        The encoder, with ``weights_sha256`` set.

    Raises:
        HistofuseError: If the encoder is unknown, or its weights are missing or do not fit.

    Example:
        >>> enc = create_encoder("tiny-vit")
        >>> enc(torch.zeros(2, 112, 112, 3, dtype=torch.uint8)).shape
        torch.Size([2, 192])
    """
    spec = get_spec(name)
    source = str(weights) if weights is not None else spec.weights
    if source.startswith("hf-hub:"):
        kwargs = resolve_kwargs(spec.kwargs)
        trunk = timm.create_model(source, pretrained=True, num_classes=0, **kwargs)
        digest = sha256_state_dict(trunk)
    elif source == "random":
        if spec.seed is None:
            raise HistofuseError(f"encoder {name!r} has no seed for a random initialisation")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(spec.seed)
            trunk = build_trunk(spec)
        digest = sha256_state_dict(trunk)
    else:
        path = Path(source)
        if not path.is_file():
            raise HistofuseError(
                f"encoder {name!r} needs its weights ({spec.weights}); no file at {path}. "
                f"Download them and set `weights: {{{name}: /path/to/file}}` in the config"
            )
        trunk = _trunk_from_file(spec, path)
        digest = sha256_file(path)
    encoder = Encoder(spec, trunk, digest).eval().to(device)
    for p in encoder.parameters():
        p.requires_grad_(False)
    return encoder
