"""Context autoencoder (CAE, Chen et al. 2022): masked image modeling in representation space.

The encoder (a timm ViT) sees only the visible patches. A latent regressor of cross-attention blocks predicts
the representations of the hidden patches: its queries are a shared mask token plus each hidden patch's position
embedding; its keys and values are the visible latents and the current queries (as the official code does).
The alignment constraint asks those predictions to match the encoder's own representations of the hidden
patches, computed from the hidden patches alone with a stop-gradient: the MSE between both, each standardised
per token (`standardize`), so that shrinking the latents' scale cannot satisfy it. A light decoder of self-attention
blocks maps the predicted latents (only) to the normalised pixels of the hidden patches. Loss = pixel MSE +
``align_weight`` x alignment MSE. The encoder and the regressor/decoder use fixed 2D sin-cos position embeddings.

Saved layout (`cae_state_dict`): the encoder's keys at top level as timm names them (so the file loads with
``load_encoder(arch, weights=FILE)``), then ``mask_token``, ``regressor.*`` and ``decoder.*``; the metadata entry
``patchlens_cae`` (JSON `CAEConfig`) lets `load_cae` rebuild the whole model.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from functools import partial

import timm
import torch
import torch.nn.functional as F
from timm.layers import Mlp
from timm.models.vision_transformer import Block
from torch import nn

from ssl_core.errors import BadRequest, CheckpointError
from ssl_core.features.vit_tokens import (
    embed_patches,
    encode_tokens,
    random_masking,
    set_sincos_positions,
    sincos_pos_embed_2d,
)
from ssl_core.mim.mae import patch_statistics, patchify
from ssl_core.models.weights import check_fits, read_state_dict, safetensors_metadata

METADATA_KEY = "patchlens_cae"
EXTRA_PREFIXES = ("mask_token", "regressor.", "decoder.")


@dataclass
class CAEConfig:
    """What a CAE is beyond its encoder's architecture (stored as JSON in saved files)."""

    arch: str = "patchlens_vit_tiny_p8"
    img_size: int = 96
    regressor_depth: int = 2
    decoder_depth: int = 2
    num_heads: int = 3  # heads of the regressor and decoder blocks
    mask_ratio: float = 0.5
    align_weight: float = 2.0
    norm_pix_loss: bool = True

    @classmethod
    def from_json(cls, text: str) -> "CAEConfig":
        data = json.loads(text)
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class CAELoss:
    loss: torch.Tensor  # reconstruction + align_weight * alignment
    reconstruction: torch.Tensor  # pixel MSE over hidden patches
    alignment: torch.Tensor  # MSE between standardised predicted and encoded latents of hidden patches
    mask: torch.Tensor  # [N, L] float, 1 = hidden


@dataclass
class EncodedView:
    """A masked image after the encoder."""

    latent: torch.Tensor  # [N, P+K, D] encoder output for the prefix and visible patch tokens
    prefix: torch.Tensor  # [N, P, D] embedded prefix tokens (class token with its position)
    hidden: torch.Tensor  # [N, M, D] embedded hidden patch tokens (with positions; not encoded)
    ids_shuffle: torch.Tensor  # [N, L] patch indices, the K visible first, then the M hidden
    mask: torch.Tensor  # [N, L] float, 1 = hidden


class CrossAttention(nn.Module):
    """Multi-head attention of queries [N, M, D] over keys and values [N, T, D]."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise BadRequest(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.q, self.k, self.v = (nn.Linear(dim, dim, bias=qkv_bias) for _ in range(3))
        self.proj = nn.Linear(dim, dim)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """query: [N, M, D], key and value: [N, T, D] -> [N, M, D]"""
        N, M, D = query.shape
        heads = lambda x: x.reshape(N, x.shape[1], self.num_heads, D // self.num_heads).transpose(1, 2)  # noqa: E731
        out = F.scaled_dot_product_attention(heads(self.q(query)), heads(self.k(key)), heads(self.v(value)))
        return self.proj(out.transpose(1, 2).reshape(N, M, D))


class RegressorBlock(nn.Module):
    """CAE's regressor block: cross-attention of the queries over (visible latents, queries), then an MLP."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm_q, self.norm_k, self.norm_v = (nn.LayerNorm(dim, eps=1e-6) for _ in range(3))
        self.attn = CrossAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x_q: torch.Tensor, x_kv: torch.Tensor, pos_q: torch.Tensor, pos_kv: torch.Tensor) -> torch.Tensor:
        """x_q, pos_q: [N, M, D]; x_kv, pos_kv: [N, T, D] -> updated queries [N, M, D]"""
        x_q = x_q + self.attn(self.norm_q(x_q + pos_q), self.norm_k(x_kv + pos_kv), self.norm_v(x_kv))
        return x_q + self.mlp(self.norm2(x_q))


class LatentRegressor(nn.Module):
    def __init__(self, dim: int, depth: int, num_heads: int):
        super().__init__()
        self.blocks = nn.ModuleList([RegressorBlock(dim, num_heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)


class PixelDecoder(nn.Module):
    def __init__(self, dim: int, depth: int, num_heads: int, patch_pixels: int):
        super().__init__()
        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        self.blocks = nn.ModuleList([Block(dim, num_heads, 4.0, qkv_bias=True, norm_layer=norm_layer) for _ in range(depth)])
        self.norm = norm_layer(dim)
        self.pred = nn.Linear(dim, patch_pixels)


class CAEModel(nn.Module):
    """Encoder + latent regressor + pixel decoder (see the module docstring)."""

    def __init__(self, config: CAEConfig = CAEConfig()):
        super().__init__()

        self.config = config
        self.encoder = timm.create_model(config.arch, pretrained=False, num_classes=0, img_size=config.img_size)
        self.patch_size = int(self.encoder.patch_embed.patch_size[0])
        self.grid_hw = tuple(int(s) for s in self.encoder.patch_embed.grid_size)
        self.num_prefix = int(self.encoder.num_prefix_tokens)
        dim = int(self.encoder.embed_dim)
        set_sincos_positions(self.encoder)  # fixed, as MAE's
        self.encoder.pos_embed.requires_grad_(False)
        self.register_buffer("pos_embed", sincos_pos_embed_2d(dim, self.grid_hw, self.num_prefix), persistent=False)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.regressor = LatentRegressor(dim, config.regressor_depth, config.num_heads)
        self.decoder = PixelDecoder(dim, config.decoder_depth, config.num_heads, self.patch_size ** 2 * 3)
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        for module in (self.regressor, self.decoder):
            module.apply(_init_linear_and_norm)

    @property
    def img_size(self) -> int:
        return self.grid_hw[0] * self.patch_size

    # ----------------------------------------------------------------------------------------- steps
    def positions(self, ids: torch.Tensor) -> torch.Tensor:
        """Sin-cos position embeddings of patch indices: ids [N, K] -> [N, K, D]."""
        table = self.pos_embed[0, self.num_prefix:]  # [L, D]
        return table[ids]

    def forward_encoder(self, imgs: torch.Tensor, mask_ratio: float, mask: torch.Tensor | None = None) -> EncodedView:
        """Mask the patches of imgs [N, 3, H, W] and encode the visible ones (see `EncodedView`)."""
        if tuple(imgs.shape[-2:]) != (self.img_size, self.img_size):
            raise BadRequest(f"images are {imgs.shape[-2]}x{imgs.shape[-1]} px; this CAE takes {self.img_size}x{self.img_size}")
        x, prefix, _ = embed_patches(self.encoder, imgs)  # x: [N, L, D], prefix: [N, P, D]
        visible, mask, ids_restore = random_masking(x, mask_ratio, mask)  # visible: [N, K, D]
        ids_shuffle = torch.argsort(ids_restore, dim=1)
        hidden_ids = ids_shuffle[:, visible.shape[1]:]
        hidden = torch.gather(x, 1, hidden_ids.unsqueeze(-1).expand(-1, -1, x.shape[-1]))  # [N, M, D]
        return EncodedView(encode_tokens(self.encoder, prefix, visible), prefix, hidden, ids_shuffle, mask)

    def forward_regressor(self, latent: torch.Tensor, ids_shuffle: torch.Tensor) -> torch.Tensor:
        """Visible latents [N, P+K, D] -> predicted latents of the hidden patches [N, M, D]."""
        N, K = latent.shape[0], latent.shape[1] - self.num_prefix
        pos_visible = torch.cat([self.pos_embed[:, :self.num_prefix].expand(N, -1, -1),
                                 self.positions(ids_shuffle[:, :K])], dim=1)  # [N, P+K, D]
        pos_hidden = self.positions(ids_shuffle[:, K:])  # [N, M, D]
        queries = self.mask_token.expand(N, pos_hidden.shape[1], -1)
        pos_kv = torch.cat([pos_visible, pos_hidden], dim=1)
        for block in self.regressor.blocks:
            queries = block(queries, torch.cat([latent, queries], dim=1), pos_hidden, pos_kv)
        return self.regressor.norm(queries)

    def forward_decoder(self, predicted: torch.Tensor, ids_shuffle: torch.Tensor) -> torch.Tensor:
        """Predicted latents [N, M, D] -> pixels of the hidden patches [N, M, p*p*3]."""
        x = predicted + self.positions(ids_shuffle[:, ids_shuffle.shape[1] - predicted.shape[1]:])
        for block in self.decoder.blocks:
            x = block(x)
        return self.decoder.pred(self.decoder.norm(x))

    def encode_hidden(self, prefix: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """The encoder's representation of the hidden patches from them alone, no gradient. -> [N, M, D]"""
        with torch.no_grad():
            return encode_tokens(self.encoder, prefix, hidden)[:, self.num_prefix:].detach()

    def pixel_targets(self, imgs: torch.Tensor, ids_shuffle: torch.Tensor, num_hidden: int) -> torch.Tensor:
        """(Normalised) pixels of the hidden patches [N, M, p*p*3]."""
        target = patchify(imgs, self.patch_size)
        if self.config.norm_pix_loss:
            mean, std = patch_statistics(target)
            target = (target - mean) / std
        hidden_ids = ids_shuffle[:, ids_shuffle.shape[1] - num_hidden:]
        return torch.gather(target, 1, hidden_ids.unsqueeze(-1).expand(-1, -1, target.shape[-1]))

    def forward_loss(self, imgs: torch.Tensor, mask_ratio: float | None = None, mask: torch.Tensor | None = None) -> CAELoss:
        """imgs: [N, 3, H, W] normalised; mask: optional [N, L] (1 = hidden) -> the losses."""
        ratio = self.config.mask_ratio if mask_ratio is None else mask_ratio
        view = self.forward_encoder(imgs, ratio, mask)
        predicted = self.forward_regressor(view.latent, view.ids_shuffle)  # [N, M, D]
        target = self.encode_hidden(view.prefix, view.hidden)  # [N, M, D], no gradient
        alignment = F.mse_loss(standardize(predicted), standardize(target))
        pixels = self.forward_decoder(predicted, view.ids_shuffle)
        targets = self.pixel_targets(imgs, view.ids_shuffle, predicted.shape[1])
        reconstruction = F.mse_loss(pixels.float(), targets.float())
        return CAELoss(reconstruction + self.config.align_weight * alignment, reconstruction, alignment, view.mask)

    @torch.no_grad()
    def predict_masked_latents(self, imgs: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For hidden patches (mask [N, L] or [L], 1 = hidden; same count per image): the regressor's predicted
        latents and the encoder's own latents of those patches, each [N, M, D], hidden patches in index order."""
        view = self.forward_encoder(imgs, 0.0, mask)
        return self.forward_regressor(view.latent, view.ids_shuffle), self.encode_hidden(view.prefix, view.hidden)


def standardize(latents: torch.Tensor) -> torch.Tensor:
    """Each latent to zero mean and unit variance over its channels (a LayerNorm without gain). [..., D]"""
    return F.layer_norm(latents.float(), latents.shape[-1:])


def _init_linear_and_norm(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


# ------------------------------------------------------------------------------------------- saving and loading
def cae_state_dict(model: CAEModel) -> dict[str, torch.Tensor]:
    """Encoder keys at top level (timm names), then ``mask_token``, ``regressor.*``, ``decoder.*``."""
    state = model.state_dict()
    encoder = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
    return encoder | {k: v for k, v in state.items() if k.startswith(EXTRA_PREFIXES)}


def cae_metadata(model: CAEModel) -> dict[str, str]:
    """The metadata entry that lets `load_cae` rebuild the model: {METADATA_KEY: JSON `CAEConfig`}."""
    return {METADATA_KEY: json.dumps(asdict(model.config))}


def load_cae(path: str | os.PathLike, device: str | torch.device = "cpu") -> CAEModel:
    """A CAE saved by PatchLens (`cae_state_dict` + metadata), whole, in eval mode; `CheckpointError` otherwise."""
    state_dict = read_state_dict(path)
    metadata = safetensors_metadata(path)
    if METADATA_KEY not in metadata:
        raise CheckpointError(f"{path}: not a PatchLens CAE file (no '{METADATA_KEY}' metadata)")
    model = CAEModel(CAEConfig.from_json(metadata[METADATA_KEY]))
    expected = cae_state_dict(model)
    check_fits(expected, state_dict, f"{path} does not fit its CAE config")
    model.load_state_dict({(k if k.startswith(EXTRA_PREFIXES) else f"encoder.{k}"): state_dict[k] for k in expected})
    return model.eval().to(device)


__all__ = ["CAEModel", "CAEConfig", "CAELoss", "cae_state_dict", "cae_metadata", "load_cae", "METADATA_KEY"]
