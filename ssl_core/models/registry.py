"""The model table: short names for the encoders PatchLens knows, and where their weights come from.

Every entry maps a short name to a timm architecture and one weights source:

* ``hub``: a timm pretrained id (``arch.tag``), fetched from the Hugging Face Hub as timm does;
* ``url``: an official checkpoint file outside timm (MoCo v3, iBOT), its keys remapped onto timm's ViT;
* ``bundled``: a ``.safetensors`` file in ``assets/models`` trained by PatchLens (offline, small);
* ``random``: random initialisation with a fixed seed (untrained; for tests and as a placeholder).

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


def _hub(name: str, hub_id: str, family: str, objective: str, **kw) -> ModelSpec:
    return ModelSpec(name=name, arch=hub_id.split(".")[0], source="hub", hub_id=hub_id, family=family,
                     objective=objective, **kw)


SSL_DINO = "self-distillation (joint-embedding)"
SSL_DINOV2 = "self-distillation + masked token prediction"
MIM_PIXELS = "masked image modeling (pixels)"
MIM_TOKENS = "masked image modeling (tokens)"
SUPERVISED = "supervised classification"

CURATED: tuple[ModelSpec, ...] = (
    _hub("dino-vits16", "vit_small_patch16_224.dino", "DINO", SSL_DINO),
    _hub("dino-vitb16", "vit_base_patch16_224.dino", "DINO", SSL_DINO),
    _hub("dinov2-vits14", "vit_small_patch14_dinov2.lvd142m", "DINOv2", SSL_DINOV2),
    _hub("dinov2-vitb14", "vit_base_patch14_dinov2.lvd142m", "DINOv2", SSL_DINOV2),
    _hub("dinov2-vits14-reg", "vit_small_patch14_reg4_dinov2.lvd142m", "DINOv2", SSL_DINOV2),
    _hub("dinov2-vitb14-reg", "vit_base_patch14_reg4_dinov2.lvd142m", "DINOv2", SSL_DINOV2),
    _hub("mae-vitb16", "vit_base_patch16_224.mae", "MAE", MIM_PIXELS),
    _hub("sup-vitb16", "vit_base_patch16_224.augreg_in21k_ft_in1k", "supervised (AugReg)", SUPERVISED),
    _hub("deit-b16", "deit_base_patch16_224.fb_in1k", "supervised (DeiT)", SUPERVISED),
    _hub("clip-vitb16", "vit_base_patch16_clip_224.openai", "CLIP", "image-text contrastive"),
    _hub("beitv2-vitb16", "beitv2_base_patch16_224.in1k_ft_in1k", "BEiT v2", MIM_TOKENS + ", fine-tuned"),
    ModelSpec(
        name="mocov3-vitb16", arch="vit_base_patch16_224", source="url", family="MoCo v3",
        objective="contrastive (joint-embedding)", checkpoint_format="mocov3",
        url="https://dl.fbaipublicfiles.com/moco-v3/vit-b-300ep/vit-b-300ep.pth.tar",
    ),
    ModelSpec(
        name="ibot-vitb16", arch="vit_base_patch16_224", source="url", family="iBOT",
        objective="self-distillation + masked token prediction", checkpoint_format="ibot",
        url="https://lf3-nlp-opensource.bytetos.com/obj/nlp-opensource/archive/2022/ibot/vitb_16/checkpoint_teacher.pth",
    ),
)

RANDOM_TINY = ModelSpec(
    name="random-tiny", arch="patchlens_vit_tiny_p8", source="random", family="random init",
    objective="none (random weights)", image_size=96,
)

_EXTRA: dict[str, ModelSpec] = {}


def register_spec(spec: ModelSpec) -> ModelSpec:
    """Add a spec to the table (used by the bundled zoo)."""
    _EXTRA[spec.name] = spec
    return spec


def all_specs() -> list[ModelSpec]:
    from ssl_core.models import zoo  # noqa: F401  (registers the bundled models)

    return [*_EXTRA.values(), RANDOM_TINY, *CURATED]


def default_model_name() -> str:
    """The bundled default model when its weights are present, else the untrained placeholder."""
    from ssl_core.models.zoo import DEFAULT_BUNDLED

    spec = resolve_spec(DEFAULT_BUNDLED)
    return spec.name if spec.trained else RANDOM_TINY.name


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
    cfg = timm.models.get_pretrained_cfg(full_id)
    image_size = int(cfg.input_size[-1]) if cfg is not None else 224  # the size the model was trained at
    if cfg is not None and (cfg.hf_hub_id or cfg.url):
        return ModelSpec(name=name, arch=arch, source="hub", hub_id=full_id, family="timm", image_size=image_size)
    return ModelSpec(name=name, arch=arch, source="random", family="timm", objective="none (random weights)",
                     image_size=image_size)


def with_image_size(spec: ModelSpec, image_size: int | None) -> ModelSpec:
    return spec if image_size is None else replace(spec, image_size=int(image_size))
