"""Loading real MAE checkpoints, with their decoder, into `ssl_core.mim.mae.MaskedAutoencoder`.

`load_mae` reads three layouts, refusing any checkpoint that does not fit whole (`CheckpointError` names the
missing or mismatched keys; nothing is loaded half-way):

* the official MAE release (``mae_visualize_vit_{base,large,huge}.pth``, ``mae_pretrain_vit_*_full.pth``;
  state dict under ``model``), by URL or local file;
* Hugging Face ``ViTMAEForPreTraining`` (``facebook/vit-mae-base`` ...), from the hub or a local file, with
  separate q/k/v Linears concatenated into timm's ``qkv`` and LayerNorm eps 1e-12 (MAE's own is 1e-6);
* PatchLens's bundled ``.safetensors`` files: the official layout plus a ``patchlens_mae`` metadata entry
  (JSON `MAEConfig`) that records the architecture and whether targets are normalised pixels.

The architecture is read from the tensor shapes (embed dim, depth, MLP ratio, patch size, grid, decoder dims;
`infer_config`); head counts come from the metadata / Hugging Face config, else a table of the released sizes.
Pixel targets: the official visualize files and Hugging Face checkpoints predict raw (normalised-image)
pixels; ``_full`` files were trained with normalised-pixel targets (``norm_pix_loss``); bundled files say so in
their metadata. `open_mae` is what the app and the CLI call: a name or a weights file, on a device.
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import asdict
from pathlib import Path

import timm
import torch

from ssl_core.errors import BadRequest, CheckpointError, ModelUnavailable
from ssl_core.mim.mae import (
    MAE_EPS,
    METADATA_KEY,
    MAEConfig,
    MaskedAutoencoder,
    is_decoder_key,
    mae_from_config,
    official_state_dict,
)
from ssl_core.models.registry import BUNDLED_DIR, DEFAULT_MAE, MAE_SOURCES, MAE_SPEC_ARCH, MAESource, ModelSpec
from ssl_core.models.weights import (
    TENSOR_SUFFIXES,
    _fetch_from_hf,
    check_fits,
    fetch_url,
    offline_hint,
    read_state_dict,
    safetensors_metadata,
)

HF_EPS = 1e-12  # LayerNorm eps of Hugging Face ViTMAE
ENCODER_HEADS = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16}  # ViT-Ti/S/B/L/H
DECODER_HEADS = {512: 16, 128: 4}  # the MAE release's decoder; build_mae's default


# ------------------------------------------------------------------------------------------- official layout
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
    spec = ModelSpec(name=name, arch=MAE_SPEC_ARCH, source="hub", hub_id=repo)
    weights = _fetch_from_hf(spec, repo, None)
    config_path = _fetch_from_hf(spec, repo, "config.json")
    return weights, json.loads(config_path.read_text())


def _is_hub_repo(text: str) -> bool:
    return text.startswith("hf:") or (re.fullmatch(r"[\w.-]+/[\w.-]+", text) is not None
                                      and not text.endswith(TENSOR_SUFFIXES) and not Path(text).exists())


def locate_checkpoint(text: str, named: MAESource | None) -> tuple[Path, dict]:
    """The local file of an MAE source (fetched when it is remote) and what the source tells about it (hints).

    ``named`` is the `MAE_SOURCES` entry of ``text``, if any. Raises `ModelUnavailable`.
    """
    hints: dict = {}
    if named is not None and named.kind == "bundled":
        path = BUNDLED_DIR / named.location
        if not path.is_file():
            raise ModelUnavailable(
                f"the bundled MAE '{named.name}' is missing ({path}): it has not been trained or installed yet. "
                f"Name another MAE ({', '.join(n for n in MAE_SOURCES if n != named.name)}) or a local file.")
    elif (named is not None and named.kind == "url") or text.startswith(("http://", "https://")):
        url = named.location if named else text
        path = fetch_url(ModelSpec(name=named.name if named else text, arch=MAE_SPEC_ARCH, source="url", url=url), url)
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
                                          + offline_hint(text, mae=True))
        hints["norm_pix_loss"] = _norm_pix_from_name(path.name)
        config_json = path.with_name("config.json")
        if config_json.is_file():
            hints.update(_hf_hints(json.loads(config_json.read_text())))
    return path, hints


def checkpoint_hints(path: Path, named: MAESource | None, hints: dict, norm_pix_loss: bool | None) -> dict:
    """The source's hints, overridden in turn by the file's bundled metadata, the named source and the caller."""
    hints = dict(hints)
    metadata = safetensors_metadata(path)
    if METADATA_KEY in metadata:
        hints.update({k: v for k, v in asdict(MAEConfig.from_json(metadata[METADATA_KEY])).items()
                      if k in ("num_heads", "decoder_heads", "norm_eps", "norm_pix_loss", "arch")})
    if named is not None and named.norm_pix_loss is not None:
        hints["norm_pix_loss"] = named.norm_pix_loss
    if norm_pix_loss is not None:
        hints["norm_pix_loss"] = norm_pix_loss
    return {k: v for k, v in hints.items() if v is not None}


def load_mae(source: str | os.PathLike, arch: str | None = None, norm_pix_loss: bool | None = None,
             ) -> MaskedAutoencoder:
    """Load an MAE with its decoder from a name in `MAE_SOURCES`, a URL, a hub repository or a local file.

    ``arch`` names the timm architecture of the encoder (default: a plain ViT of the checkpoint's dims, or the
    one recorded in bundled metadata); ``norm_pix_loss`` overrides whether targets are normalised pixels.
    Raises `ModelUnavailable` (offline / missing file, within seconds) or `CheckpointError`.
    """
    text = str(source)
    named = MAE_SOURCES.get(text)
    path, source_hints = locate_checkpoint(text, named)
    hints = checkpoint_hints(path, named, source_hints, norm_pix_loss)
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
    from ssl_core.features.encoder import resolve_device

    target = resolve_device(device)  # before any download
    if weights is not None:
        if name and name not in MAE_SOURCES and not timm.is_model(name):
            raise BadRequest(f"with a weights file, the model must be a timm architecture for its encoder or "
                             f"left out, not '{name}'")
        mae = load_mae(weights, arch=name if name and name not in MAE_SOURCES else None)
    else:
        mae = load_mae(name or DEFAULT_MAE)
    return mae.eval().to(target)


__all__ = ["load_mae", "open_mae", "infer_config", "load_official_state_dict", "official_from_hf", "is_hf_layout",
           "mae_from_state_dict", "HF_EPS"]
