"""A masked autoencoder (MAE) with its decoder, over any timm ViT encoder, and loaders for real MAE checkpoints.

The model follows facebookresearch/mae ``models_mae.py``: the encoder is a timm ``VisionTransformer`` that sees
only the visible patches; a light decoder (timm ``Block`` s) fills the hidden ones in with a shared mask token
and predicts their pixels. Its ``state_dict`` in the official layout (`official_state_dict`) has the encoder's
timm keys at top level (``cls_token``, ``pos_embed``, ``patch_embed.proj.*``, ``blocks.N.*``, ``norm.*``) and
the decoder keys ``decoder_embed``, ``mask_token``, ``decoder_pos_embed`` (fixed 2D sin-cos), ``decoder_blocks.N``,
``decoder_norm``, ``decoder_pred``, so the same file also loads as a plain encoder with `load_encoder`.

`load_mae` reads three layouts, refusing any checkpoint that does not fit whole (`CheckpointError` names the
missing or mismatched keys; nothing is loaded half-way):

* the official MAE release (``mae_visualize_vit_{base,large,huge}.pth``, ``mae_pretrain_vit_*_full.pth``;
  state dict under ``model``), by URL or local file;
* Hugging Face ``ViTMAEForPreTraining`` (``facebook/vit-mae-base`` ...), from the hub or a local file, with
  separate q/k/v Linears concatenated into timm's ``qkv`` and LayerNorm eps 1e-12 (MAE's own is 1e-6);
* PatchLens's bundled ``.safetensors`` files: the official layout plus a ``patchlens_mae`` metadata entry
  (JSON `MAEConfig`) that records the architecture and whether targets are normalised pixels.

The architecture is read from the tensor shapes (embed dim, depth, MLP ratio, patch size, grid, decoder dims);
head counts come from the metadata / Hugging Face config, else a table of the released sizes.
Pixel targets: the official visualize files and Hugging Face checkpoints predict raw (normalised-image)
pixels; ``_full`` files were trained with normalised-pixel targets (``norm_pix_loss``); bundled files say so in
their metadata. Images are normalised with the ImageNet mean/std, as both releases do.
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import asdict, dataclass, fields
from functools import partial
from pathlib import Path

import timm
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn

from ssl_core.errors import BadRequest, CheckpointError, ModelUnavailable
from ssl_core.features.vit_tokens import embed_patches, encode_tokens, random_masking
from ssl_core.models.registry import BUNDLED_DIR, DEFAULT_MAE, MAE_SOURCES, ModelSpec
from ssl_core.models.weights import (
    TENSOR_SUFFIXES,
    _fetch_from_hf,
    check_fits,
    fetch_url,
    offline_hint,
    read_state_dict,
    safetensors_metadata,
)

METADATA_KEY = "patchlens_mae"
MAE_EPS = 1e-6  # LayerNorm eps of the official MAE release (and of timm's ViT)
HF_EPS = 1e-12  # LayerNorm eps of Hugging Face ViTMAE
ENCODER_HEADS = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16}  # ViT-Ti/S/B/L/H
DECODER_HEADS = {512: 16, 128: 4}  # the MAE release's decoder; build_mae's default
UNTRAINED = "random init (untrained)"


# ------------------------------------------------------------------------------------------- pure steps
def patchify(imgs: torch.Tensor, patch_size: int) -> torch.Tensor:
    """imgs: [N, 3, H, W] -> patches [N, L, p*p*3] (row-major patches, pixels in (p, q, c) order)."""
    N, C, H, W = imgs.shape
    p = patch_size
    if H % p or W % p:
        raise BadRequest(f"image size {H}x{W} is not a multiple of the patch size {p}")
    h, w = H // p, W // p
    x = imgs.reshape(N, C, h, p, w, p)
    x = torch.einsum("nchpwq->nhwpqc", x)
    return x.reshape(N, h * w, p * p * C)


def unpatchify(x: torch.Tensor, patch_size: int, grid_hw: tuple[int, int]) -> torch.Tensor:
    """patches [N, L, p*p*3] -> imgs [N, 3, H, W] (the inverse of `patchify`)."""
    p = patch_size
    h, w = grid_hw
    N, L, D = x.shape
    if L != h * w or D % (p * p):
        raise BadRequest(f"{L} patches of {D} values do not fit a {h}x{w} grid of {p}-pixel patches")
    C = D // (p * p)
    x = x.reshape(N, h, w, p, p, C)
    x = torch.einsum("nhwpqc->nchpwq", x)
    return x.reshape(N, C, h * p, w * p)


def patch_statistics(target: torch.Tensor, eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-patch mean and std (unbiased variance + eps, as MAE's norm_pix_loss). target: [N, L, K] -> [N, L, 1] x2."""
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True)
    return mean, (var + eps) ** 0.5



def sincos_pos_embed_2d(embed_dim: int, grid_hw: tuple[int, int], num_prefix: int = 1) -> torch.Tensor:
    """MAE's fixed 2D sin-cos position embedding [1, num_prefix + h*w, D] (zeros for the prefix tokens)."""
    if embed_dim % 4:
        raise BadRequest(f"the sin-cos position embedding needs a dimension divisible by 4, not {embed_dim}")
    h, w = grid_hw
    omega = 1.0 / 10000 ** (torch.arange(embed_dim // 4, dtype=torch.float64) / (embed_dim / 4))  # [D/4]

    def embed_1d(pos: torch.Tensor) -> torch.Tensor:  # pos: [M] -> [M, D/2]
        out = torch.outer(pos.reshape(-1), omega)
        return torch.cat([torch.sin(out), torch.cos(out)], dim=1)

    grid_w, grid_h = torch.meshgrid(torch.arange(w, dtype=torch.float64), torch.arange(h, dtype=torch.float64),
                                    indexing="xy")  # as MAE: the first half encodes the column
    emb = torch.cat([embed_1d(grid_w), embed_1d(grid_h)], dim=1)  # [h*w, D]
    emb = torch.cat([torch.zeros(num_prefix, embed_dim, dtype=torch.float64), emb], dim=0)
    return emb.float().unsqueeze(0)


# ------------------------------------------------------------------------------------------- timm ViT pieces

# ------------------------------------------------------------------------------------------- the model
@dataclass
class MAEConfig:
    """What a saved MAE is: enough to rebuild it (stored as JSON in bundled files' metadata)."""

    embed_dim: int
    depth: int
    num_heads: int
    patch_size: int
    img_size: int
    decoder_dim: int
    decoder_depth: int
    decoder_heads: int
    mlp_ratio: float = 4.0
    decoder_mlp_ratio: float = 4.0
    qkv_bias: bool = True
    norm_eps: float = MAE_EPS
    norm_pix_loss: bool = False
    arch: str | None = None  # a timm architecture to build the encoder with (None: a plain ViT of these dims)

    @classmethod
    def from_json(cls, text: str) -> "MAEConfig":
        data = json.loads(text)
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


class MaskedAutoencoder(nn.Module):
    """Masked autoencoder with a timm VisionTransformer encoder (see the module docstring)."""

    def __init__(self, encoder: VisionTransformer, decoder_dim: int = 512, decoder_depth: int = 8,
                 decoder_heads: int = 16, decoder_mlp_ratio: float = 4.0, norm_eps: float = MAE_EPS,
                 norm_pix_loss: bool = False):
        super().__init__()
        if not isinstance(encoder, VisionTransformer):
            raise TypeError(f"the MAE encoder must be a timm VisionTransformer, not {type(encoder).__name__}")
        if getattr(encoder, "dynamic_img_size", False):
            raise BadRequest("build the MAE encoder without dynamic_img_size: MAE works at its native image size")
        self.encoder = encoder
        self.patch_size = int(encoder.patch_embed.patch_size[0])
        self.grid_hw = tuple(int(s) for s in encoder.patch_embed.grid_size)
        self.num_prefix = int(encoder.num_prefix_tokens)
        self.embed_dim = int(encoder.embed_dim)
        self.norm_pix_loss = norm_pix_loss
        self.source = UNTRAINED  # where the weights came from, for display (load_mae sets it)
        self.arch: str | None = None  # the timm architecture of the encoder, when built from one
        self.pixel_mean = IMAGENET_DEFAULT_MEAN
        self.pixel_std = IMAGENET_DEFAULT_STD
        norm_layer = partial(nn.LayerNorm, eps=norm_eps)
        num_patches = self.grid_hw[0] * self.grid_hw[1]

        self.decoder_embed = nn.Linear(self.embed_dim, decoder_dim, bias=True)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, self.num_prefix + num_patches, decoder_dim),
                                              requires_grad=False)  # fixed sin-cos embedding
        self.decoder_blocks = nn.ModuleList([
            Block(decoder_dim, decoder_heads, decoder_mlp_ratio, qkv_bias=True, norm_layer=norm_layer)
            for _ in range(decoder_depth)])
        self.decoder_norm = norm_layer(decoder_dim)
        self.decoder_pred = nn.Linear(decoder_dim, self.patch_size ** 2 * 3, bias=True)  # decoder to patch
        self.initialize_decoder_weights()

    def initialize_decoder_weights(self) -> None:
        """MAE's initialisation of the decoder (the encoder keeps timm's own)."""
        self.decoder_pos_embed.data.copy_(sincos_pos_embed_2d(self.decoder_pos_embed.shape[-1], self.grid_hw,
                                                              self.num_prefix))
        nn.init.normal_(self.mask_token, std=0.02)
        for module in [self.decoder_embed, self.decoder_blocks, self.decoder_norm, self.decoder_pred]:
            module.apply(_init_linear_and_norm)

    @property
    def trained(self) -> bool:
        return self.source != UNTRAINED

    @property
    def img_size(self) -> int:
        return self.grid_hw[0] * self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_hw[0] * self.grid_hw[1]

    # ----------------------------------------------------------------------------------------- steps
    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """imgs: [N, 3, H, W] -> [N, L, p*p*3]"""
        return patchify(imgs, self.patch_size)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """x: [N, L, p*p*3] -> imgs [N, 3, H, W]"""
        return unpatchify(x, self.patch_size, self.grid_hw)

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """RGB in [0, 1], [N, 3, H, W] -> the normalised images the model takes."""
        mean = pixels.new_tensor(self.pixel_mean).view(1, 3, 1, 1)
        std = pixels.new_tensor(self.pixel_std).view(1, 3, 1, 1)
        return (pixels - mean) / std

    def denormalize(self, imgs: torch.Tensor) -> torch.Tensor:
        """The inverse of `normalize` (not clipped)."""
        mean = imgs.new_tensor(self.pixel_mean).view(1, 3, 1, 1)
        std = imgs.new_tensor(self.pixel_std).view(1, 3, 1, 1)
        return imgs * std + mean

    def forward_encoder(self, imgs: torch.Tensor, mask_ratio: float, mask: torch.Tensor | None = None,
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """imgs: [N, 3, H, W] -> latent [N, P+K, D], mask [N, L], ids_restore [N, L]"""
        if tuple(imgs.shape[-2:]) != (self.img_size, self.img_size):
            raise BadRequest(f"images are {imgs.shape[-2]}x{imgs.shape[-1]} px; this MAE takes "
                             f"{self.img_size}x{self.img_size}")
        x, prefix, _ = embed_patches(self.encoder, imgs)  # x: [N, L, D], prefix: [N, P, D]
        x, mask, ids_restore = random_masking(x, mask_ratio, mask)  # x: [N, K, D]
        latent = encode_tokens(self.encoder, prefix, x)
        return latent, mask, ids_restore

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """latent: [N, P+K, D], ids_restore: [N, L] -> pred [N, L, p*p*3]"""
        P = self.num_prefix
        x = self.decoder_embed(latent)  # [N, P+K, Dd]
        N, L = ids_restore.shape
        mask_tokens = self.mask_token.repeat(N, P + L - x.shape[1], 1)
        x_ = torch.cat([x[:, P:, :], mask_tokens], dim=1)  # no prefix tokens: [N, L, Dd], shuffled order
        x_ = torch.gather(x_, dim=1, index=ids_restore.unsqueeze(-1).repeat(1, 1, x.shape[2]))  # unshuffle
        x = torch.cat([x[:, :P, :], x_], dim=1)  # append prefix tokens: [N, P+L, Dd]
        x = x + self.decoder_pos_embed
        for block in self.decoder_blocks:
            x = block(x)
        x = self.decoder_norm(x)
        x = self.decoder_pred(x)  # predictor projection: [N, P+L, p*p*3]
        return x[:, P:, :]

    def patch_targets(self, imgs: torch.Tensor) -> torch.Tensor:
        """What the decoder predicts per patch: pixels, or per-patch normalised pixels. [N, L, p*p*3]"""
        target = self.patchify(imgs)
        if self.norm_pix_loss:
            mean, std = patch_statistics(target)
            target = (target - mean) / std
        return target

    def patch_losses(self, imgs: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        """Mean squared error per patch. imgs: [N, 3, H, W], pred: [N, L, p*p*3] -> [N, L]"""
        return ((pred - self.patch_targets(imgs)) ** 2).mean(dim=-1)

    def forward_loss(self, imgs: torch.Tensor, mask_ratio: float = 0.75, mask: torch.Tensor | None = None,
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encode, decode and score. Returns loss (mean over hidden patches), pred [N, L, p*p*3], mask [N, L]."""
        latent, mask, ids_restore = self.forward_encoder(imgs, mask_ratio, mask)
        pred = self.forward_decoder(latent, ids_restore)
        loss = (self.patch_losses(imgs, pred) * mask).sum() / mask.sum()  # mean loss on removed patches
        return loss, pred, mask

    def forward(self, imgs: torch.Tensor, mask_ratio: float = 0.75, mask: torch.Tensor | None = None,
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.forward_loss(imgs, mask_ratio, mask)


def _init_linear_and_norm(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)  # as MAE (following official JAX ViT)
        if m.bias is not None:
            nn.init.constant_(m.bias, 0)
    elif isinstance(m, nn.LayerNorm):
        nn.init.constant_(m.bias, 0)
        nn.init.constant_(m.weight, 1.0)


# ------------------------------------------------------------------------------------------- building
def build_mae(arch: str = "patchlens_vit_tiny_p8", decoder_dim: int = 128, decoder_depth: int = 2,
              decoder_heads: int = 4, norm_pix_loss: bool = True, decoder_mlp_ratio: float = 4.0,
              **encoder_kwargs) -> MaskedAutoencoder:
    """A randomly initialised MAE over a timm ViT architecture (``encoder_kwargs`` go to timm.create_model)."""
    if not timm.is_model(arch):
        raise BadRequest(f"unknown timm architecture '{arch}'")
    encoder = timm.create_model(arch, pretrained=False, num_classes=0, **encoder_kwargs)
    if encoder.pos_embed is not None:  # as MAE: a fixed 2D sin-cos position embedding
        embedded_prefix = 0 if encoder.no_embed_class else encoder.num_prefix_tokens
        encoder.pos_embed.data.copy_(sincos_pos_embed_2d(encoder.embed_dim, encoder.patch_embed.grid_size,
                                                         embedded_prefix))
        encoder.pos_embed.requires_grad_(False)
    eps = float(getattr(encoder.norm, "eps", MAE_EPS))
    mae = MaskedAutoencoder(encoder, decoder_dim, decoder_depth, decoder_heads, decoder_mlp_ratio, eps, norm_pix_loss)
    mae.arch = arch
    return mae


def mae_config(mae: MaskedAutoencoder) -> MAEConfig:
    """The `MAEConfig` that rebuilds this model."""
    enc = mae.encoder
    block = mae.decoder_blocks[0] if len(mae.decoder_blocks) else None
    return MAEConfig(
        embed_dim=mae.embed_dim, depth=len(enc.blocks), num_heads=int(enc.blocks[0].attn.num_heads),
        patch_size=mae.patch_size, img_size=mae.img_size, decoder_dim=int(mae.decoder_embed.out_features),
        decoder_depth=len(mae.decoder_blocks), decoder_heads=int(block.attn.num_heads) if block else 1,
        mlp_ratio=enc.blocks[0].mlp.fc1.out_features / mae.embed_dim,
        decoder_mlp_ratio=(block.mlp.fc1.out_features / block.mlp.fc1.in_features) if block else 4.0,
        qkv_bias=enc.blocks[0].attn.qkv.bias is not None, norm_eps=float(mae.decoder_norm.eps),
        norm_pix_loss=bool(mae.norm_pix_loss), arch=mae.arch,
    )


def mae_from_config(config: MAEConfig) -> MaskedAutoencoder:
    """An MAE (random weights) of a given configuration."""
    dims = dict(img_size=config.img_size, patch_size=config.patch_size, embed_dim=config.embed_dim,
                depth=config.depth, num_heads=config.num_heads, mlp_ratio=config.mlp_ratio, qkv_bias=config.qkv_bias)
    norm_layer = partial(nn.LayerNorm, eps=config.norm_eps)
    if config.arch:  # the named architecture (its registers, pooling ...) at the recorded dims
        kwargs = dims | ({} if config.norm_eps == MAE_EPS else {"norm_layer": norm_layer})
        return build_mae(config.arch, config.decoder_dim, config.decoder_depth, config.decoder_heads,
                         config.norm_pix_loss, config.decoder_mlp_ratio, **kwargs)
    encoder = VisionTransformer(**dims, num_classes=0, norm_layer=norm_layer)
    return MaskedAutoencoder(encoder, config.decoder_dim, config.decoder_depth, config.decoder_heads,
                             config.decoder_mlp_ratio, config.norm_eps, config.norm_pix_loss)


# ------------------------------------------------------------------------------------------- official layout
def is_decoder_key(key: str) -> bool:
    return key == "mask_token" or key.startswith("decoder_")


def official_state_dict(mae: MaskedAutoencoder) -> dict[str, torch.Tensor]:
    """The state dict in the official MAE layout: encoder keys as timm names them, then the decoder's."""
    state = mae.state_dict()
    encoder = {k.removeprefix("encoder."): v for k, v in state.items() if not is_decoder_key(k)}
    return encoder | {k: v for k, v in state.items() if is_decoder_key(k)}


def load_official_state_dict(mae: MaskedAutoencoder, state_dict: dict[str, torch.Tensor],
                             name: str = "checkpoint") -> list[str]:
    """Load an official-layout state dict whole, or refuse it (`CheckpointError` naming the keys).

    Returns the checkpoint keys that the model does not use.
    """
    expected = official_state_dict(mae)
    check_fits(expected, state_dict, f"{name} does not fit this MAE")
    module_keys = {(k if is_decoder_key(k) else f"encoder.{k}"): state_dict[k] for k in expected}
    mae.load_state_dict(module_keys, strict=True)
    return [k for k in state_dict if k not in expected]


def save_mae(mae: MaskedAutoencoder, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> Path:
    """Write the official layout as .safetensors with the `MAEConfig` in the metadata (the bundled layout)."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {k: v.detach().contiguous().cpu() for k, v in official_state_dict(mae).items()}
    save_file(tensors, str(path), metadata={**(metadata or {}), METADATA_KEY: json.dumps(asdict(mae_config(mae)))})
    return path


# ------------------------------------------------------------------------------------------- Hugging Face layout
_HF_LAYER_RENAMES = (
    ("attention.output.dense", "attn.proj"), ("layernorm_before", "norm1"), ("layernorm_after", "norm2"),
    ("intermediate.dense", "mlp.fc1"), ("output.dense", "mlp.fc2"),
)
_HF_TOP_RENAMES = {
    "vit.embeddings.cls_token": "cls_token", "vit.embeddings.position_embeddings": "pos_embed",
    "vit.embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "vit.embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "vit.layernorm.weight": "norm.weight", "vit.layernorm.bias": "norm.bias",
    "decoder.mask_token": "mask_token", "decoder.decoder_pos_embed": "decoder_pos_embed",
}
# decoder blocks: ``decoder.decoder_layers.N`` (hub checkpoints), ``decoder.decoder_encoder.layer.N`` (transformers 5)
_HF_LAYER = re.compile(r"^(vit\.encoder\.layer|decoder\.decoder_layers|decoder\.decoder_encoder\.layer)\.(\d+)\.(.+)$")


def is_hf_layout(state_dict: dict[str, torch.Tensor]) -> bool:
    return any(k.startswith("vit.embeddings.") for k in state_dict)


def official_from_hf(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Hugging Face ViTMAEForPreTraining keys -> official MAE keys (q, k, v concatenated into qkv)."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        if key in _HF_TOP_RENAMES:
            out[_HF_TOP_RENAMES[key]] = value
            continue
        match = _HF_LAYER.match(key)
        if match is None:
            if key.startswith("decoder.decoder_"):  # decoder_embed, decoder_norm, decoder_pred
                out[key.removeprefix("decoder.")] = value
            else:
                out[key] = value  # left for the fit check to report or ignore
            continue
        stack, index, rest = match.groups()
        block = f"{'blocks' if stack.startswith('vit') else 'decoder_blocks'}.{index}"
        part = re.match(r"attention\.attention\.(query|key|value)\.(weight|bias)$", rest)
        if part:
            qkv.setdefault(f"{block}.attn.qkv.{part.group(2)}", {})[part.group(1)] = value
            continue
        for hf_name, timm_name in _HF_LAYER_RENAMES:
            if rest.startswith(hf_name):
                rest = timm_name + rest[len(hf_name):]
                break
        out[f"{block}.{rest}"] = value
    for key, parts in qkv.items():
        if set(parts) != {"query", "key", "value"}:
            gone = ", ".join(sorted({"query", "key", "value"} - set(parts)))
            raise CheckpointError(f"Hugging Face checkpoint: {key} lacks its {gone} part")
        out[key] = torch.cat([parts["query"], parts["key"], parts["value"]], dim=0)  # rows: q [:D], k [D:2D], v [2D:]
    return out


# ------------------------------------------------------------------------------------------- inferring
REQUIRED_KEYS = ("pos_embed", "patch_embed.proj.weight", "blocks.0.attn.qkv.weight", "blocks.0.mlp.fc1.weight",
                 "decoder_embed.weight", "mask_token", "decoder_pos_embed", "decoder_blocks.0.mlp.fc1.weight",
                 "decoder_pred.weight")


def _count_blocks(state_dict: dict[str, torch.Tensor], prefix: str) -> int:
    indices = [int(m.group(1)) for k in state_dict if (m := re.match(rf"^{re.escape(prefix)}\.(\d+)\.", k))]
    return max(indices) + 1 if indices else 0


def infer_config(state_dict: dict[str, torch.Tensor], hints: dict | None = None,
                 name: str = "checkpoint") -> MAEConfig:
    """An `MAEConfig` from an official-layout state dict's shapes (head counts from ``hints`` or the table)."""
    hints = hints or {}
    missing = [k for k in REQUIRED_KEYS if k not in state_dict]
    if missing:
        what = "has no MAE decoder" if any(is_decoder_key(k) for k in missing) else "is not a complete ViT"
        raise CheckpointError(f"{name} {what}: missing keys {', '.join(missing)}")
    dim = int(state_dict["pos_embed"].shape[-1])
    patch = int(state_dict["patch_embed.proj.weight"].shape[-1])
    num_prefix = int("cls_token" in state_dict) + (int(state_dict["reg_token"].shape[1]) if "reg_token" in state_dict else 0)
    num_patches = int(state_dict["pos_embed"].shape[1]) - num_prefix
    side = math.isqrt(max(num_patches, 0))
    if side * side != num_patches or side == 0:
        raise CheckpointError(f"{name}: pos_embed {tuple(state_dict['pos_embed'].shape)} is not a square patch grid")
    decoder_dim = int(state_dict["decoder_embed.weight"].shape[0])
    decoder_fc1 = state_dict["decoder_blocks.0.mlp.fc1.weight"]
    return MAEConfig(
        embed_dim=dim, depth=_count_blocks(state_dict, "blocks"),
        num_heads=int(hints.get("num_heads") or ENCODER_HEADS.get(dim, max(1, dim // 64))),
        patch_size=patch, img_size=side * patch, decoder_dim=decoder_dim,
        decoder_depth=_count_blocks(state_dict, "decoder_blocks"),
        decoder_heads=int(hints.get("decoder_heads") or DECODER_HEADS.get(decoder_dim, max(1, decoder_dim // 64))),
        mlp_ratio=state_dict["blocks.0.mlp.fc1.weight"].shape[0] / dim,
        decoder_mlp_ratio=decoder_fc1.shape[0] / decoder_dim,
        qkv_bias="blocks.0.attn.qkv.bias" in state_dict,
        norm_eps=float(hints.get("norm_eps", MAE_EPS)), norm_pix_loss=bool(hints.get("norm_pix_loss", False)),
        arch=hints.get("arch"),
    )


def _hf_hints(config: dict) -> dict:
    """Hints from a Hugging Face ViTMAEConfig dict."""
    hints = {"norm_eps": float(config.get("layer_norm_eps", HF_EPS)),
             "norm_pix_loss": bool(config.get("norm_pix_loss", False))}
    if config.get("num_attention_heads"):
        hints["num_heads"] = int(config["num_attention_heads"])
    if config.get("decoder_num_attention_heads"):
        hints["decoder_heads"] = int(config["decoder_num_attention_heads"])
    return hints


def mae_from_state_dict(state_dict: dict[str, torch.Tensor], hints: dict | None = None, arch: str | None = None,
                        name: str = "checkpoint") -> MaskedAutoencoder:
    """Build the MAE a state dict describes (official or Hugging Face layout) and load it whole."""
    hints = dict(hints or {})
    if is_hf_layout(state_dict):
        state_dict = official_from_hf(state_dict)
        hints.setdefault("norm_eps", HF_EPS)
    if arch:
        hints["arch"] = arch
    config = infer_config(state_dict, hints, name)
    mae = mae_from_config(config)
    load_official_state_dict(mae, state_dict, name)
    return mae.eval()


# ------------------------------------------------------------------------------------------- sources


def _norm_pix_from_name(filename: str) -> bool | None:
    """The MAE release's convention: ``*_full.pth`` were trained on normalised pixels, visualize files not."""
    if "visualize" in filename:
        return False
    if filename.endswith("_full.pth"):
        return True
    return None


def _fetch_hf_repo(name: str, repo: str) -> tuple[Path, dict]:
    """Weights and config of a hub repository (from the cache, else downloaded; fails fast offline)."""
    spec = ModelSpec(name=name, arch="vit_mae", source="hub", hub_id=repo)
    weights = _fetch_from_hf(spec, repo, None)
    config_path = _fetch_from_hf(spec, repo, "config.json")
    return weights, json.loads(config_path.read_text())


def _is_hub_repo(text: str) -> bool:
    return text.startswith("hf:") or (re.fullmatch(r"[\w.-]+/[\w.-]+", text) is not None
                                      and not text.endswith(TENSOR_SUFFIXES) and not Path(text).exists())


def load_mae(source: str | os.PathLike, arch: str | None = None, norm_pix_loss: bool | None = None,
             ) -> MaskedAutoencoder:
    """Load an MAE with its decoder from a name in `MAE_SOURCES`, a URL, a hub repository or a local file.

    ``arch`` names the timm architecture of the encoder (default: a plain ViT of the checkpoint's dims, or the
    one recorded in bundled metadata); ``norm_pix_loss`` overrides whether targets are normalised pixels.
    Raises `ModelUnavailable` (offline / missing file, within seconds) or `CheckpointError`.
    """
    text = str(source)
    named = MAE_SOURCES.get(text)
    hints: dict = {}
    if named is not None and named.kind == "bundled":
        path = BUNDLED_DIR / named.location
        if not path.is_file():
            raise ModelUnavailable(
                f"the bundled MAE '{named.name}' is missing ({path}): it has not been trained or installed yet. "
                f"Name another MAE ({', '.join(n for n in MAE_SOURCES if n != named.name)}) or a local file.")
    elif (named is not None and named.kind == "url") or text.startswith(("http://", "https://")):
        url = named.location if named else text
        path = fetch_url(ModelSpec(name=named.name if named else text, arch="vit_mae", source="url", url=url), url)
        hints["norm_pix_loss"] = _norm_pix_from_name(Path(url).name)
    elif (named is not None and named.kind == "hf") or _is_hub_repo(text):
        repo = named.location if named else text.removeprefix("hf:")
        path, hf_config = _fetch_hf_repo(named.name if named else repo, repo)
        hints.update(_hf_hints(hf_config))
    else:
        path = Path(text).expanduser()
        if not path.is_file():
            raise ModelUnavailable(f"MAE checkpoint not found: '{text}' is neither a known MAE name "
                                          f"({', '.join(MAE_SOURCES)}), a URL, a hub repository nor a file. "
                                          + offline_hint(text))
        hints["norm_pix_loss"] = _norm_pix_from_name(path.name)
        config_json = path.with_name("config.json")
        if config_json.is_file():
            hints.update(_hf_hints(json.loads(config_json.read_text())))
    metadata = safetensors_metadata(path)
    if METADATA_KEY in metadata:
        hints.update({k: v for k, v in asdict(MAEConfig.from_json(metadata[METADATA_KEY])).items()
                      if k in ("num_heads", "decoder_heads", "norm_eps", "norm_pix_loss", "arch")})
    if named is not None and named.norm_pix_loss is not None:
        hints["norm_pix_loss"] = named.norm_pix_loss
    if norm_pix_loss is not None:
        hints["norm_pix_loss"] = norm_pix_loss
    hints = {k: v for k, v in hints.items() if v is not None}
    mae = mae_from_state_dict(read_state_dict(path), hints, arch, name=str(path))
    mae.source = f"{named.name}: {path}" if named else str(path)
    return mae


def open_mae(name: str | None = None, weights: str | os.PathLike | None = None,
             device: str | torch.device | None = None) -> MaskedAutoencoder:
    """The MAE a user names, in eval mode on ``device`` (default: cuda when present).

    With ``weights`` (a file, URL or hub repository) that checkpoint is loaded, and ``name``, if given, must be
    a timm architecture for its encoder (or an `MAE_SOURCES` name, which the file then replaces); without,
    ``name`` is any source `load_mae` takes (default: the bundled ``patchlens-mae``).
    """
    from ssl_core.features.encoder import default_device

    if weights is not None:
        if name and name not in MAE_SOURCES and not timm.is_model(name):
            raise BadRequest(f"with a weights file, the model must be a timm architecture for its encoder or "
                             f"left out, not '{name}'")
        mae = load_mae(weights, arch=name if name and name not in MAE_SOURCES else None)
    else:
        mae = load_mae(name or DEFAULT_MAE)
    return mae.eval().to(torch.device(device) if device else default_device())


__all__ = ["MaskedAutoencoder", "MAEConfig", "METADATA_KEY", "build_mae", "load_mae", "open_mae", "save_mae",
           "mae_config", "mae_from_config", "infer_config",
           "official_state_dict", "load_official_state_dict", "official_from_hf", "mae_from_state_dict",
           "patchify", "unpatchify", "patch_statistics", "sincos_pos_embed_2d"]
