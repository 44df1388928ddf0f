"""A masked autoencoder (MAE) with its decoder, over any timm ViT encoder: the model, its steps and its layout.

The model follows facebookresearch/mae ``models_mae.py``: the encoder is a timm ``VisionTransformer`` that sees
only the visible patches; a light decoder (timm ``Block`` s) fills the hidden ones in with a shared mask token
and predicts their pixels. Its ``state_dict`` in the official layout (`official_state_dict`) has the encoder's
timm keys at top level (``cls_token``, ``pos_embed``, ``patch_embed.proj.*``, ``blocks.N.*``, ``norm.*``) and
the decoder keys ``decoder_embed``, ``mask_token``, ``decoder_pos_embed`` (fixed 2D sin-cos), ``decoder_blocks.N``,
``decoder_norm``, ``decoder_pred``, so the same file also loads as a plain encoder with `load_encoder`.
`save_mae` writes that layout as ``.safetensors`` with a ``patchlens_mae`` metadata entry (JSON `MAEConfig`) that
records the architecture and whether targets are normalised pixels (PatchLens's bundled layout).

Reading checkpoints (the official release, Hugging Face ``ViTMAEForPreTraining``, bundled files) is
`ssl_core.mim.mae_checkpoints` (`load_mae`, `open_mae`). Images are normalised with the ImageNet mean/std
(`ssl_core.features.pixels`), as both releases do.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from functools import partial
from pathlib import Path

import timm
import torch
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn

from ssl_core.errors import BadRequest
from ssl_core.features.pixels import IMAGENET_MEAN, IMAGENET_STD, denormalize_pixels, normalize_pixels
from ssl_core.features.vit_tokens import (
    embed_patches,
    encode_tokens,
    random_masking,
    set_sincos_positions,
    sincos_pos_embed_2d,
)

METADATA_KEY = "patchlens_mae"
MAE_EPS = 1e-6  # LayerNorm eps of the official MAE release (and of timm's ViT)
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
        self.pixel_mean = IMAGENET_MEAN  # images are normalised as both MAE releases do
        self.pixel_std = IMAGENET_STD
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
        """RGB in [0, 1], [N, 3, H, W] -> the normalised images the model takes, [N, 3, H, W]."""
        return normalize_pixels(pixels, self.pixel_mean, self.pixel_std)

    def denormalize(self, imgs: torch.Tensor) -> torch.Tensor:
        """The inverse of `normalize` (not clipped). imgs: [N, 3, H, W] -> RGB [N, 3, H, W]."""
        return denormalize_pixels(imgs, self.pixel_mean, self.pixel_std)

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
        """`forward_loss`: imgs [N, 3, H, W] -> loss [], pred [N, L, p*p*3], mask [N, L]"""
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
              **encoder_kwargs: object) -> MaskedAutoencoder:
    """A randomly initialised MAE over a timm ViT architecture (``encoder_kwargs`` go to timm.create_model)."""
    if not timm.is_model(arch):
        raise BadRequest(f"unknown timm architecture '{arch}'")
    encoder = timm.create_model(arch, pretrained=False, num_classes=0, **encoder_kwargs)
    if encoder.pos_embed is not None:  # as MAE: a fixed 2D sin-cos position embedding
        set_sincos_positions(encoder)
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


def save_mae(mae: MaskedAutoencoder, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> Path:
    """Write the official layout as .safetensors with the `MAEConfig` in the metadata (the bundled layout)."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {k: v.detach().contiguous().cpu() for k, v in official_state_dict(mae).items()}
    save_file(tensors, str(path), metadata={**(metadata or {}), METADATA_KEY: json.dumps(asdict(mae_config(mae)))})
    return path


__all__ = ["MaskedAutoencoder", "MAEConfig", "METADATA_KEY", "MAE_EPS", "UNTRAINED", "build_mae", "save_mae",
           "mae_config", "mae_from_config", "is_decoder_key", "official_state_dict", "patchify", "unpatchify",
           "patch_statistics", "sincos_pos_embed_2d"]

