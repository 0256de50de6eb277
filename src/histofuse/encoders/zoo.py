"""Built-in encoders.

Real pathology foundation models are registered with the exact timm architecture and kwargs
their published weights need, the pooling, the input transform and the recommended CUDA
precision (TRIDENT's autocast dtype), and the published parameter count of the trunk that is
built (checked on the meta device by the tests). Models published as Hugging Face
``transformers`` checkpoints (Phikon, Phikon-v2, Hibou, Midnight) are built as the equivalent
timm ViT and load a local checkpoint through the ``hf-vit`` key map. Where tools disagree on
pooling, each choice is its own id (``virchow2`` vs ``virchow2-cls``).

The tiny test encoders are registered exactly like the real foundation models: a timm
architecture with kwargs, a pooling rule and an input transform. They differ only in having no
published weights: they are initialised from a fixed seed, so every run builds the same network.
"""

from __future__ import annotations

from histofuse.encoders.registry import (
    HALF_MEAN,
    HALF_STD,
    HIBOU_MEAN,
    HIBOU_STD,
    HOPTIMUS_MEAN,
    HOPTIMUS_STD,
    EncoderSpec,
    register_encoder,
)

SWIGLU = "timm.layers:SwiGLUPacked"
SILU = "torch.nn:SiLU"


@register_encoder("tiny-vit")
def tiny_vit() -> EncoderSpec:
    """A 4-block ViT-Tiny at 112 px with CLS pooling, seeded random init (test encoder)."""
    return EncoderSpec(
        name="tiny-vit",
        arch="vit_tiny_patch16_224",
        kwargs={"img_size": 112, "depth": 4, "dynamic_img_size": True},
        pooling="cls",
        embed_dim=192,
        input_size=112,
        interpolation="bicubic",
        weights="random",
        seed=0,
        description="test encoder: ViT-Ti/16, 4 blocks, 112 px, CLS, seeded random init",
    )


@register_encoder("tiny-vit-mean")
def tiny_vit_mean() -> EncoderSpec:
    """The same network as ``tiny-vit`` pooled as the mean of patch tokens (test encoder)."""
    return EncoderSpec(
        name="tiny-vit-mean",
        arch="vit_tiny_patch16_224",
        kwargs={"img_size": 112, "depth": 4, "dynamic_img_size": True},
        pooling="mean",
        embed_dim=192,
        input_size=112,
        interpolation="bicubic",
        weights="random",
        seed=0,
        description="test encoder: tiny-vit pooled as the mean of patch tokens",
    )


@register_encoder("tiny-cnn")
def tiny_cnn() -> EncoderSpec:
    """A ResNet-10t at 112 px with global average pooling, seeded random init (test encoder)."""
    return EncoderSpec(
        name="tiny-cnn",
        arch="resnet10t",
        pooling="avg",
        embed_dim=512,
        input_size=112,
        interpolation="bilinear",
        weights="random",
        seed=0,
        description="test encoder: ResNet-10t, 112 px, average pool, seeded random init",
    )


def _vit_l_uni() -> dict:
    return {"img_size": 224, "init_values": 1e-5, "dynamic_img_size": True}


@register_encoder("uni")
def uni() -> EncoderSpec:
    """UNI (Chen et al. 2024): ViT-L/16, DINOv2-trained on 100M tiles; CLS."""
    return EncoderSpec(
        name="uni",
        arch="vit_large_patch16_224",
        kwargs=_vit_l_uni(),
        pooling="cls",
        embed_dim=1024,
        resize=224,
        precision="fp16",
        n_params=303_400_000,
        weights="hf-hub:MahmoodLab/uni",
        description="UNI ViT-L/16, 224 px, CLS",
    )


@register_encoder("uni2-h")
def uni2_h() -> EncoderSpec:
    """UNI2-h: ViT-H/14 (1536-d, 24 blocks, SwiGLU, 8 registers); CLS."""
    return EncoderSpec(
        name="uni2-h",
        arch="vit_giant_patch14_224",
        kwargs={
            "img_size": 224,
            "patch_size": 14,
            "depth": 24,
            "num_heads": 24,
            "embed_dim": 1536,
            "mlp_ratio": 2.66667 * 2,
            "mlp_layer": SWIGLU,
            "act_layer": SILU,
            "reg_tokens": 8,
            "no_embed_class": True,
            "init_values": 1e-5,
            "dynamic_img_size": True,
        },
        pooling="cls",
        embed_dim=1536,
        resize=224,
        precision="bf16",
        n_params=681_400_000,
        weights="hf-hub:MahmoodLab/UNI2-h",
        description="UNI2-h ViT-H/14 SwiGLU + 8 registers, 224 px, CLS",
    )


@register_encoder("conch-v1.5-trunk")
def conch_v15_trunk() -> EncoderSpec:
    """CONCH v1.5 image trunk: ViT-L/16 at 448 px with LayerScale 1.0; CLS of the trunk."""
    return EncoderSpec(
        name="conch-v1.5-trunk",
        arch="vit_large_patch16_224",
        kwargs={"img_size": 448, "init_values": 1.0, "dynamic_img_size": True},
        pooling="cls",
        embed_dim=1024,
        input_size=448,
        resize=448,
        precision="fp16",
        n_params=303_400_000,
        weights="conch_v1_5_trunk.safetensors (MahmoodLab/conchv1_5, trunk.* keys)",
        description=(
            "CONCH v1.5 ViT-L/16 trunk, 448 px, CLS (1024-d); the published 768-d embedding "
            "adds an attentional pooler not built here; n_params is the published ViT-L/16 "
            "count (303.4M), the 448-px position table adds 0.6M"
        ),
    )


def _virchow(name: str, reg_tokens: int, pooling: str, dim: int, desc: str) -> EncoderSpec:
    kwargs = {
        "img_size": 224,
        "init_values": 1e-5,
        "mlp_ratio": 5.3375,
        "global_pool": "",
        "mlp_layer": SWIGLU,
        "act_layer": SILU,
        "dynamic_img_size": True,
    }
    if reg_tokens:
        kwargs["reg_tokens"] = reg_tokens
    hub = "paige-ai/Virchow2" if reg_tokens else "paige-ai/Virchow"
    return EncoderSpec(
        name=name,
        arch="vit_huge_patch14_224",
        kwargs=kwargs,
        pooling=pooling,
        embed_dim=dim,
        interpolation="bicubic",
        precision="fp16",
        n_params=631_200_000,
        weights=f"hf-hub:{hub}",
        description=desc,
    )


@register_encoder("virchow")
def virchow() -> EncoderSpec:
    """Virchow: ViT-H/14 SwiGLU; CLS concatenated with the mean of patch tokens (2560-d)."""
    return _virchow("virchow", 0, "cls+mean", 2560, "Virchow ViT-H/14, 224 px, CLS+mean")


@register_encoder("virchow2")
def virchow2() -> EncoderSpec:
    """Virchow2: ViT-H/14 SwiGLU + 4 registers; CLS + mean of patch tokens (TRIDENT, 2560-d)."""
    return _virchow("virchow2", 4, "cls+mean", 2560, "Virchow2 ViT-H/14 + 4 reg, CLS+mean")


@register_encoder("virchow2-cls")
def virchow2_cls() -> EncoderSpec:
    """Virchow2 pooled as the CLS token only (eva's default, 1280-d)."""
    return _virchow("virchow2-cls", 4, "cls", 1280, "Virchow2 ViT-H/14 + 4 reg, CLS only")


@register_encoder("gigapath")
def gigapath() -> EncoderSpec:
    """Prov-GigaPath tile encoder: ViT-g/16 (1536-d, 40 blocks); CLS; 256 → 224 crop."""
    return EncoderSpec(
        name="gigapath",
        arch="vit_giant_patch14_dinov2",
        kwargs={
            "patch_size": 16,
            "embed_dim": 1536,
            "depth": 40,
            "num_heads": 24,
            "mlp_ratio": 5.33334,
            "img_size": 224,
        },
        pooling="cls",
        embed_dim=1536,
        resize=256,
        interpolation="bicubic",
        precision="fp16",
        n_params=1_130_000_000,
        weights="hf-hub:prov-gigapath/prov-gigapath",
        description="Prov-GigaPath tile ViT-g/16, 256→224 crop, CLS",
    )


def _hoptimus(name: str, hub: str) -> EncoderSpec:
    return EncoderSpec(
        name=name,
        arch="vit_giant_patch14_reg4_dinov2",
        kwargs={
            "img_size": 224,
            "global_pool": "token",
            "init_values": 1e-5,
            "dynamic_img_size": True,
        },
        pooling="cls",
        embed_dim=1536,
        mean=HOPTIMUS_MEAN,
        std=HOPTIMUS_STD,
        precision="fp16",
        n_params=1_130_000_000,
        weights=f"hf-hub:{hub}",
        description=f"{hub.split('/')[1]} ViT-g/14 + 4 reg, 224 px, CLS",
    )


@register_encoder("h-optimus-0")
def h_optimus_0() -> EncoderSpec:
    """H-optimus-0: ViT-g/14 with 4 registers; CLS."""
    return _hoptimus("h-optimus-0", "bioptimus/H-optimus-0")


@register_encoder("h-optimus-1")
def h_optimus_1() -> EncoderSpec:
    """H-optimus-1: same architecture as H-optimus-0; CLS."""
    return _hoptimus("h-optimus-1", "bioptimus/H-optimus-1")


def _h0_mini(name: str, pooling: str, dim: int) -> EncoderSpec:
    return EncoderSpec(
        name=name,
        arch="vit_base_patch14_reg4_dinov2",
        kwargs={
            "img_size": 224,
            "init_values": 1e-5,
            "mlp_ratio": 5.33334,
            "mlp_layer": SWIGLU,
            "act_layer": SILU,
            "dynamic_img_size": True,
        },
        pooling=pooling,
        embed_dim=dim,
        mean=HOPTIMUS_MEAN,
        std=HOPTIMUS_STD,
        interpolation="bicubic",
        precision="fp16",
        n_params=85_700_000,
        weights="hf-hub:bioptimus/H0-mini",
        description=f"H0-mini ViT-B/14 SwiGLU + 4 reg (distilled H-optimus-0), {pooling}",
    )


@register_encoder("h0-mini")
def h0_mini() -> EncoderSpec:
    """H0-mini pooled as CLS (TRIDENT and HEST default, 768-d)."""
    return _h0_mini("h0-mini", "cls", 768)


@register_encoder("h0-mini-cls-mean")
def h0_mini_cls_mean() -> EncoderSpec:
    """H0-mini pooled as CLS + mean of patch tokens (LazySlide default, 1536-d)."""
    return _h0_mini("h0-mini-cls-mean", "cls+mean", 1536)


@register_encoder("phikon")
def phikon() -> EncoderSpec:
    """Phikon: iBOT ViT-B/16 (HF ``ViTModel``) built as timm ``vit_base_patch16_224``; CLS."""
    return EncoderSpec(
        name="phikon",
        arch="vit_base_patch16_224",
        kwargs={"img_size": 224, "dynamic_img_size": True},
        pooling="cls",
        embed_dim=768,
        precision="fp32",
        n_params=85_800_000,
        key_map="hf-vit",
        weights="owkin/phikon model.safetensors (HF ViTModel; keys remapped to timm)",
        description="Phikon iBOT ViT-B/16 as timm ViT-B/16, 224 px, CLS",
    )


@register_encoder("phikon-v2")
def phikon_v2() -> EncoderSpec:
    """Phikon-v2: DINOv2 ViT-L/16 (HF ``Dinov2Model``) built as timm ViT-L/16; CLS."""
    return EncoderSpec(
        name="phikon-v2",
        arch="vit_large_patch16_224",
        kwargs=_vit_l_uni(),
        pooling="cls",
        embed_dim=1024,
        resize=224,
        precision="fp32",
        n_params=303_400_000,
        key_map="hf-vit",
        weights="owkin/phikon-v2 model.safetensors (HF Dinov2Model; keys remapped to timm)",
        description="Phikon-v2 DINOv2 ViT-L/16 as timm ViT-L/16, 224 px, CLS",
    )


def _hibou(name: str, arch: str, dim: int, n_params: int, hub: str) -> EncoderSpec:
    return EncoderSpec(
        name=name,
        arch=arch,
        kwargs={"img_size": 224, "dynamic_img_size": True},
        pooling="cls",
        embed_dim=dim,
        mean=HIBOU_MEAN,
        std=HIBOU_STD,
        interpolation="bicubic",
        precision="fp32",
        n_params=n_params,
        key_map="hf-vit",
        weights=f"{hub} model.safetensors (HF Dinov2 + registers; keys remapped to timm)",
        description=f"{hub.split('/')[1]} DINOv2 + 4 reg as timm {arch}, CLS",
    )


@register_encoder("hibou-b")
def hibou_b() -> EncoderSpec:
    """Hibou-B: DINOv2 ViT-B/14 with 4 registers; CLS."""
    return _hibou("hibou-b", "vit_base_patch14_reg4_dinov2", 768, 85_700_000, "histai/hibou-B")


@register_encoder("hibou-l")
def hibou_l() -> EncoderSpec:
    """Hibou-L: DINOv2 ViT-L/14 with 4 registers; CLS."""
    return _hibou("hibou-l", "vit_large_patch14_reg4_dinov2", 1024, 303_700_000, "histai/hibou-L")


@register_encoder("kaiko-vitb16")
def kaiko_vitb16() -> EncoderSpec:
    """Kaiko ViT-B/16 (towards large pathology FMs); CLS; [-1, 1] normalisation."""
    return EncoderSpec(
        name="kaiko-vitb16",
        arch="vit_base_patch16_224",
        kwargs={"img_size": 224, "dynamic_img_size": True},
        pooling="cls",
        embed_dim=768,
        resize=224,
        mean=HALF_MEAN,
        std=HALF_STD,
        precision="fp32",
        n_params=85_800_000,
        weights="hf-hub:1aurent/vit_base_patch16_224.kaiko_ai_towards_large_pathology_fms",
        description="Kaiko ViT-B/16, 224 px, CLS",
    )


def _midnight(name: str, pooling: str, dim: int) -> EncoderSpec:
    return EncoderSpec(
        name=name,
        arch="vit_giant_patch14_dinov2",
        kwargs={"img_size": 518, "dynamic_img_size": True},
        pooling=pooling,
        embed_dim=dim,
        resize=224,
        mean=HALF_MEAN,
        std=HALF_STD,
        precision="fp16",
        n_params=1_140_000_000,
        key_map="hf-vit",
        weights="kaiko-ai/midnight model.safetensors (HF Dinov2Model; keys remapped to timm)",
        description=f"Midnight-12k DINOv2 ViT-g/14 (518-px positions, fed 224), {pooling}",
    )


@register_encoder("midnight12k")
def midnight12k() -> EncoderSpec:
    """Midnight-12k pooled as CLS (TRIDENT code and eva default, 1536-d)."""
    return _midnight("midnight12k", "cls", 1536)


@register_encoder("midnight12k-cls-mean")
def midnight12k_cls_mean() -> EncoderSpec:
    """Midnight-12k pooled as CLS + mean of patch tokens (its README, 3072-d)."""
    return _midnight("midnight12k-cls-mean", "cls+mean", 3072)


@register_encoder("ctranspath")
def ctranspath() -> EncoderSpec:
    """CTransPath (CHIEF weights): Swin-T with a convolutional stem; average pool."""
    return EncoderSpec(
        name="ctranspath",
        arch="swin_tiny_patch4_window7_224",
        kwargs={"embed_layer": "histofuse.encoders.layers:ConvStem"},
        pooling="avg",
        embed_dim=768,
        precision="fp32",
        n_params=27_500_000,
        weights="CHIEF_CTransPath.pth (MahmoodLab/hest-bench fm_v1/ctranspath)",
        description="CTransPath Swin-T + ConvStem (CHIEF weights), 224 px, average pool",
    )


@register_encoder("resnet50-trunc")
def resnet50_trunc() -> EncoderSpec:
    """ImageNet ResNet-50 truncated after layer3, average pooled (CLAM's 1024-d baseline)."""
    return EncoderSpec(
        name="resnet50-trunc",
        arch="resnet50",
        kwargs={"features_only": True, "out_indices": [3]},
        pooling="avg",
        embed_dim=1024,
        resize=224,
        precision="fp32",
        n_params=8_543_296,
        weights="hf-hub:timm/resnet50.tv_in1k",
        description=(
            "ResNet-50 (torchvision ImageNet) through layer3 + average pool; n_params counts "
            "the published 25,557,032 less layer4 (14,964,736) and fc (2,049,000)"
        ),
    )
