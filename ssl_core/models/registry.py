"""The model table: short names for the encoders PatchLens knows, and where their weights come from.

Every entry maps a short name to a timm architecture and one weights source:

* ``hub``: a timm pretrained id (``arch.tag``), fetched from the Hugging Face Hub as timm does;
* ``url``: an official checkpoint file outside timm (MoCo v3, iBOT), its keys remapped onto timm's ViT;
* ``bundled``: a ``.safetensors`` file in ``assets/models`` trained by PatchLens (offline, small);
* ``random``: random initialisation with a fixed seed (untrained; for tests, as a placeholder and as the Lab's
  baselines: ``random-tiny``, and ``random-tiny-sincos`` with the 2D sin-cos position table the MAE, CAE, DINO
  and DILEMMA start from, which by itself tells positions apart).

Any other timm ViT id (``vit_small_patch16_224.augreg_in21k`` ...) is accepted by `resolve_spec` too.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from ssl_core.errors import BadRequest

ASSETS_DIR = Path(os.environ.get("PATCHLENS_ASSETS", Path(__file__).resolve().parents[2] / "assets"))
BUNDLED_DIR = ASSETS_DIR / "models"


@dataclass(frozen=True)
class ModelSpec:
    """What an encoder is and where its weights come from (no weights are touched here)."""

    name: str  # short name, e.g. "dino-vits16"
    arch: str  # timm architecture, e.g. "vit_small_patch16_224"
    source: str  # "hub" | "url" | "bundled" | "random"
    family: str = ""  # "DINO", "MAE", "supervised", ...
    objective: str = ""  # the training objective in a few words
    hub_id: str | None = None  # timm pretrained id ("arch.tag") for source == "hub"
    url: str | None = None  # checkpoint URL for source == "url"
    checkpoint_format: str = "timm"  # key layout of the checkpoint: "timm" | "mocov3" | "ibot"
    bundled_file: str | None = None  # file name under assets/models for source == "bundled"
    image_size: int = 224  # short side images are resized to
    create_kwargs: dict = field(default_factory=dict)  # extra timm.create_model arguments
    paradigm: str = ""  # what the training asks of the tokens: one of PARADIGMS ("" = not known)
    method: str | None = None  # bundled models: the `patchlens train` method that makes them
    sincos_positions: bool = False  # random models: position embeddings set to MAE's 2D sin-cos table (where the
    # MAE, CAE, DINO and DILEMMA start), not timm's random ones

    @property
    def bundled_path(self) -> Path | None:
        return BUNDLED_DIR / self.bundled_file if self.bundled_file else None

    @property
    def trained(self) -> bool:
        """False for random weights, and for bundled models whose weights file is missing."""
        if self.source == "random":
            return False
        if self.source == "bundled":
            return bool(self.bundled_path and self.bundled_path.is_file())
        return True

    @property
    def display_name(self) -> str:
        return self.name if self.trained else f"{self.name} (untrained)"


PARADIGMS = ("supervised", "joint-embedding", "mim", "location", "image-text", "autoregressive", "none")


def _hub(name: str, hub_id: str, family: str, objective: str, paradigm: str, **kw: object) -> ModelSpec:
    return ModelSpec(name=name, arch=hub_id.split(".")[0], source="hub", hub_id=hub_id, family=family,
                     objective=objective, paradigm=paradigm, **kw)


SSL_DINO = "self-distillation (joint-embedding)"
SSL_DINOV2 = "self-distillation + masked token prediction"
MIM_PIXELS = "masked image modeling (pixels)"
MIM_TOKENS = "masked image modeling (tokens)"
SUPERVISED = "supervised classification"
SSL_DINOV3 = "self-distillation + masked token prediction + Gram anchoring"
SIGLIP = "image-text contrastive (sigmoid loss)"
PE_CORE = "image-text contrastive"
PE_SPATIAL = "image-text contrastive, distilled for dense features"
MIM_FEATURES = "masked image modeling (CLIP features)"
AIM = "autoregressive (image patches + text)"
TIPS = "image-text contrastive + self-distillation + masked modeling"

CURATED: tuple[ModelSpec, ...] = (
    _hub("dino-vits16", "vit_small_patch16_224.dino", "DINO", SSL_DINO, "joint-embedding"),
    _hub("dino-vitb16", "vit_base_patch16_224.dino", "DINO", SSL_DINO, "joint-embedding"),
    _hub("dinov2-vits14", "vit_small_patch14_dinov2.lvd142m", "DINOv2", SSL_DINOV2, "joint-embedding"),
    _hub("dinov2-vitb14", "vit_base_patch14_dinov2.lvd142m", "DINOv2", SSL_DINOV2, "joint-embedding"),
    _hub("dinov2-vits14-reg", "vit_small_patch14_reg4_dinov2.lvd142m", "DINOv2", SSL_DINOV2, "joint-embedding"),
    _hub("dinov2-vitb14-reg", "vit_base_patch14_reg4_dinov2.lvd142m", "DINOv2", SSL_DINOV2, "joint-embedding"),
    _hub("mae-vitb16", "vit_base_patch16_224.mae", "MAE", MIM_PIXELS, "mim"),
    _hub("sup-vitb16", "vit_base_patch16_224.augreg_in21k_ft_in1k", "supervised (AugReg)", SUPERVISED, "supervised"),
    _hub("deit-b16", "deit_base_patch16_224.fb_in1k", "supervised (DeiT)", SUPERVISED, "supervised"),
    _hub("clip-vitb16", "vit_base_patch16_clip_224.openai", "CLIP", "image-text contrastive", "image-text"),
    _hub("beitv2-vitb16", "beitv2_base_patch16_224.in1k_ft_in1k", "BEiT v2", MIM_TOKENS + ", fine-tuned", "mim"),
    # 2025-26 encoders (timm >= 1.0.20). DINOv3, EVA-02 and PE are timm `Eva` models with rotary position embeddings.
    *(_hub(f"dinov3-vit{size}16", f"vit_{arch}_patch16_dinov3.lvd1689m", "DINOv3", SSL_DINOV3, "joint-embedding")
      for size, arch in (("s", "small"), ("b", "base"), ("l", "large"))),
    _hub("dinov3-vits16plus", "vit_small_plus_patch16_dinov3.lvd1689m", "DINOv3", SSL_DINOV3, "joint-embedding"),
    _hub("dinov3-vith16plus", "vit_huge_plus_patch16_dinov3.lvd1689m", "DINOv3", SSL_DINOV3, "joint-embedding"),
    *(_hub(f"siglip2-vitb16-{px}", f"vit_base_patch16_siglip_{px}.v2_webli", "SigLIP 2", SIGLIP, "image-text",
           image_size=px) for px in (224, 384, 512)),
    _hub("siglip2-so400m14", "vit_so400m_patch14_siglip_224.v2_webli", "SigLIP 2", SIGLIP, "image-text"),
    _hub("siglip2-so400m14-378", "vit_so400m_patch14_siglip_378.v2_webli", "SigLIP 2", SIGLIP, "image-text",
         image_size=378),
    *(_hub(f"pe-spatial-{size}16", f"vit_pe_spatial_{arch}_patch16_512.fb", "Perception Encoder (spatial)",
           PE_SPATIAL, "image-text", image_size=512) for size, arch in (("t", "tiny"), ("s", "small"), ("b", "base"))),
    _hub("pe-core-t16", "vit_pe_core_tiny_patch16_384.fb", "Perception Encoder (core)", PE_CORE, "image-text",
         image_size=384),
    _hub("pe-core-s16", "vit_pe_core_small_patch16_384.fb", "Perception Encoder (core)", PE_CORE, "image-text",
         image_size=384),
    _hub("pe-core-b16", "vit_pe_core_base_patch16_224.fb", "Perception Encoder (core)", PE_CORE, "image-text"),
    _hub("pe-core-l14", "vit_pe_core_large_patch14_336.fb", "Perception Encoder (core)", PE_CORE, "image-text",
         image_size=336),
    *(_hub(f"eva02-vit{size}14", f"eva02_{arch}_patch14_224.mim_in22k", "EVA-02", MIM_FEATURES, "mim")
      for size, arch in (("t", "tiny"), ("s", "small"), ("b", "base"))),
    _hub("aimv2-vitl14", "aimv2_large_patch14_224.apple_pt", "AIMv2", AIM, "autoregressive"),
    _hub("tipsv2-vitb14", "vit_base_patch14_reg1_tipsv2.webli", "TIPSv2", TIPS, "image-text", image_size=448),
    ModelSpec(
        name="mocov3-vitb16", arch="vit_base_patch16_224", source="url", family="MoCo v3",
        objective="contrastive (joint-embedding)", checkpoint_format="mocov3", paradigm="joint-embedding",
        url="https://dl.fbaipublicfiles.com/moco-v3/vit-b-300ep/vit-b-300ep.pth.tar",
    ),
    ModelSpec(
        name="ibot-vitb16", arch="vit_base_patch16_224", source="url", family="iBOT",
        objective="self-distillation + masked token prediction", checkpoint_format="ibot",
        paradigm="joint-embedding",
        url="https://lf3-nlp-opensource.bytetos.com/obj/nlp-opensource/archive/2022/ibot/vitb_16/checkpoint_teacher.pth",
    ),
)

RANDOM_TINY = ModelSpec(
    name="random-tiny", arch="patchlens_vit_tiny_p8", source="random", family="random init",
    objective="none (random weights)", image_size=96, paradigm="none",
)

RANDOM_TINY_SINCOS = replace(RANDOM_TINY, name="random-tiny-sincos", sincos_positions=True,
                             objective="none (random weights, 2D sin-cos position embeddings)")

BUNDLED_ARCH = "patchlens_vit_tiny_p8"  # registered with timm by `ssl_core.models.zoo`


def _bundled(name: str, method: str, family: str, objective: str, paradigm: str) -> ModelSpec:
    return ModelSpec(name=name, arch=BUNDLED_ARCH, source="bundled", family=f"PatchLens {family}", objective=objective,
                     bundled_file=f"{name}.safetensors", image_size=96, paradigm=paradigm, method=method)


BUNDLED: tuple[ModelSpec, ...] = (  # trained on the parts world by `patchlens train --method METHOD`
    _bundled("patchlens-sup", "supervised", "supervised", "supervised classification of the object class",
             "supervised"),
    _bundled("patchlens-dino", "dino", "DINO", "self-distillation (joint-embedding, contrastive family)",
             "joint-embedding"),
    _bundled("patchlens-mae", "mae", "MAE", "masked image modeling (pixels), with its decoder", "mim"),
    _bundled("patchlens-cae", "cae", "CAE",
             "masked image modeling in representation space (latent regressor + decoder)", "mim"),
    _bundled("patchlens-dilemma", "dilemma", "DILEMMA",
             "self-distillation + detecting tokens with wrong positional embeddings", "location"),
)
# The app's default: the best all-round bundled model in docs/lab.md (highest object and part probes; its part maps
# follow the ground-truth parts, while the MAE's and CAE's last-block tokens cluster by grid position).
DEFAULT_BUNDLED = "patchlens-sup"


@dataclass(frozen=True)
class MAESource:
    """A named MAE checkpoint that carries its decoder (the Reconstruct view and `patchlens reconstruct`)."""

    name: str
    kind: str  # "bundled" | "url" | "hf"
    location: str  # file name under assets/models, URL, or hub repository
    description: str = ""
    norm_pix_loss: bool | None = None  # None: read from the checkpoint (bundled metadata, HF config)


DEFAULT_MAE = "patchlens-mae"
MAE_SPEC_ARCH = "vit_mae"  # the arch of the ModelSpec an MAE checkpoint is fetched under (its download messages)
DEFAULT_CAE = "patchlens-cae"  # the CAE whose latent regressor the Reconstruct view shows
_FB = "https://dl.fbaipublicfiles.com/mae"
MAE_SOURCES: dict[str, MAESource] = {s.name: s for s in (
    MAESource(DEFAULT_MAE, "bundled", f"{DEFAULT_MAE}.safetensors", "PatchLens's bundled tiny MAE (offline)"),
    MAESource("mae-vitb16-visualize", "url", f"{_FB}/visualize/mae_visualize_vit_base.pth",
              "official MAE ViT-B/16 visualisation checkpoint (pixel targets)", False),
    MAESource("mae-vitl16-visualize", "url", f"{_FB}/visualize/mae_visualize_vit_large.pth",
              "official MAE ViT-L/16 visualisation checkpoint (pixel targets)", False),
    MAESource("mae-vitb16-normpix", "url", f"{_FB}/pretrain/mae_pretrain_vit_base_full.pth",
              "official MAE ViT-B/16 pre-training checkpoint with decoder (normalised-pixel targets)", True),
    MAESource("mae-vitb16-hf", "hf", "facebook/vit-mae-base", "Hugging Face ViTMAEForPreTraining ViT-B/16"),
    MAESource("mae-vitl16-hf", "hf", "facebook/vit-mae-large", "Hugging Face ViTMAEForPreTraining ViT-L/16"),
)}


def all_specs() -> list[ModelSpec]:
    return [*BUNDLED, RANDOM_TINY, RANDOM_TINY_SINCOS, *CURATED]


def default_model_name() -> str:
    """The bundled default model when its weights are present, else the untrained placeholder."""
    spec = resolve_spec(DEFAULT_BUNDLED)
    return spec.name if spec.trained else RANDOM_TINY.name


def bundled_name_for(method: str) -> str:
    """The bundled model a training method makes (``"dino"`` -> ``"patchlens-dino"``)."""
    for spec in BUNDLED:
        if spec.method == method:
            return spec.name
    raise BadRequest(f"no bundled model is trained with '{method}' (methods: "
                     f"{', '.join(str(s.method) for s in BUNDLED)})")


def bundled_names(trained_only: bool = True) -> list[str]:
    return [s.name for s in all_specs() if s.source == "bundled" and (s.trained or not trained_only)]


def resolve_spec(name: str) -> ModelSpec:
    """A short name from the table, or any timm ViT id (with or without a pretrained tag)."""
    for spec in all_specs():
        if spec.name == name:
            return spec
    import timm

    arch = name.split(".")[0]
    if not timm.is_model(arch):
        known = ", ".join(s.name for s in all_specs())
        raise BadRequest(f"unknown model '{name}': not a PatchLens name ({known}) nor a timm model id")
    pretrained_ids = list(timm.models.get_arch_pretrained_cfgs(arch))  # "arch.tag", the default first
    full_id = name if "." in name else (pretrained_ids[0] if pretrained_ids else arch)
    try:
        cfg = timm.models.get_pretrained_cfg(full_id)
    except RuntimeError:  # timm: "Invalid pretrained tag"
        tags = ", ".join(pretrained_ids) or f"none: use '{arch}' (random weights) or --weights FILE"
        raise BadRequest(f"unknown model '{name}': timm has no pretrained tag '{name.split('.', 1)[-1]}' for {arch} "
                         f"(its pretrained ids: {tags})") from None
    image_size = int(cfg.input_size[-1]) if cfg is not None else 224  # the size the model was trained at
    if cfg is not None and (cfg.hf_hub_id or cfg.url):
        return ModelSpec(name=name, arch=arch, source="hub", hub_id=full_id, family="timm", image_size=image_size)
    return ModelSpec(name=name, arch=arch, source="random", family="timm", objective="none (random weights)",
                     image_size=image_size)


def with_image_size(spec: ModelSpec, image_size: int | None) -> ModelSpec:
    return spec if image_size is None else replace(spec, image_size=int(image_size))
