"""Masked image modeling on held-out scenes (MAE / CAE weights files only).

`mim_probe`: reconstruction error on held-out masked scenes (the model's own loss, over hidden patches) against
predicting zero for every target value, and for a CAE the cosine between the regressor's predicted latents and the
encoder's own latents of the hidden patches (`CAEModel.predict_masked_latents`), against the same cosine with the
targets of other scenes. Scenes: the first ``mim_images`` test scenes (never more than ``n_test``), drawn at the
model's own native size.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ssl_core.features.encoder import Encoder
from ssl_core.lab.config import LabConfig
from ssl_core.lab.scenes import SPLIT_STRIDE, heldout_scenes
from ssl_core.mim.masks import random_mask
from ssl_core.progress import ProgressFn

MAE_MASK_RATIO = 0.75  # MAE's own ratio, for MAE files (a CAE file records its ratio)


@dataclass
class MIMResult:
    """Masked image modeling on held-out scenes: reconstruction, and (CAE) representation-space alignment."""

    kind: str  # "MAE" or "CAE"
    mask_ratio: float
    reconstruction_mse: float  # the model's pixel loss over hidden patches
    zero_prediction_mse: float  # the same loss for a prediction of 0 everywhere (a flat patch at its own mean for
    #                             normalised-pixel targets)
    norm_pix: bool
    alignment_cosine: float | None  # CAE: cos(predicted latent, the encoder's own latent) of hidden patches
    mismatched_cosine: float | None  # CAE: the same against another scene's latents (chance)
    alignment_mse: float | None  # CAE: its alignment loss (MSE of standardised latents)
    images: int
    hidden_patches: int  # per image
    seed: int


def mim_kind(encoder: Encoder) -> str | None:
    """"MAE" or "CAE" when the encoder's weights file carries PatchLens's MAE or CAE decoder metadata."""
    from safetensors import safe_open

    from ssl_core.mim.cae import METADATA_KEY as CAE_KEY
    from ssl_core.mim.mae import METADATA_KEY as MAE_KEY

    path = encoder.weights_file
    if path is None or path.suffix != ".safetensors":
        return None
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    return "CAE" if CAE_KEY in metadata else "MAE" if MAE_KEY in metadata else None


def load_mim_model(encoder: Encoder, kind: str, config: LabConfig) -> tuple[torch.nn.Module, float, bool]:
    """The MAE / CAE model of the encoder's weights file (on its device, eval), its mask ratio and norm_pix flag."""
    if kind == "MAE":
        from ssl_core.mim.mae_checkpoints import load_mae

        model = load_mae(encoder.weights_file)
        ratio, norm_pix = config.mask_ratio or MAE_MASK_RATIO, bool(model.norm_pix_loss)
    else:
        from ssl_core.mim.cae import load_cae

        model = load_cae(encoder.weights_file)
        ratio, norm_pix = config.mask_ratio or model.config.mask_ratio, bool(model.config.norm_pix_loss)
    return model.eval().to(encoder.device), float(ratio), norm_pix


def mim_chunk(model: torch.nn.Module, kind: str, imgs: torch.Tensor, mask: torch.Tensor, ratio: float) -> dict:
    """Mean losses of one chunk: imgs [B, 3, S, S] normalised, mask [B, L] bool (True = hidden).

    Returns "reconstruction", "zero" (the loss of predicting 0) and, for a CAE, "alignment" and the hidden patches'
    "predicted" and "own" latents [B, M, D].
    """
    with torch.inference_mode():
        if kind == "MAE":
            loss, _, _ = model.forward_loss(imgs, ratio, mask=mask)
            targets = model.patch_targets(imgs)[mask]  # [B * M, K]
            return {"reconstruction": float(loss), "zero": float((targets.float() ** 2).mean())}
        losses = model.forward_loss(imgs, ratio, mask=mask)
        view = model.forward_encoder(imgs, 0.0, mask)
        targets = model.pixel_targets(imgs, view.ids_shuffle, int(mask[0].sum()))  # [B, M, K]
        guess, truth = model.predict_masked_latents(imgs, mask)  # [B, M, D] each
    return {"reconstruction": float(losses.reconstruction), "zero": float((targets.float() ** 2).mean()),
            "alignment": float(losses.alignment), "predicted": guess.float().cpu(), "own": truth.float().cpu()}


def mim_probe(encoder: Encoder, config: LabConfig, progress: ProgressFn | None = None) -> MIMResult | None:
    """Reconstruction (and CAE alignment) on the first ``config.mim_scenes`` test scenes; None for non-MIM weights."""
    kind = mim_kind(encoder)
    if kind is None:
        return None
    model, ratio, norm_pix = load_mim_model(encoder, kind, config)
    grid = tuple(model.grid_hw)
    scenes = heldout_scenes(config, "test", model.img_size, config.mim_scenes)
    masks = torch.from_numpy(np.stack([random_mask(grid, ratio, seed=config.seed * SPLIT_STRIDE + i).reshape(-1)
                                       for i in range(len(scenes))]))  # [n, L] bool
    sums = dict(reconstruction=0.0, zero=0.0, alignment=0.0)
    latents: dict[str, list[torch.Tensor]] = dict(predicted=[], own=[])  # CAE: [B, M, D] per chunk
    for start in range(0, len(scenes), config.batch_size):
        chunk = scenes[start:start + config.batch_size]
        pixels = torch.from_numpy(np.stack([s.image for s in chunk])).permute(0, 3, 1, 2)  # [B, 3, S, S] uint8
        imgs, mask = encoder.normalize(pixels.to(encoder.device)), masks[start:start + len(chunk)].to(encoder.device)
        out = mim_chunk(model, kind, imgs, mask, ratio)
        for key in sums:
            sums[key] += out.get(key, 0.0) * len(chunk)
        for key in latents:
            latents[key] += [out[key]] if key in out else []
        if progress is not None:
            progress(start + len(chunk), len(scenes))
    mean = {key: value / len(scenes) for key, value in sums.items()}
    cosine = mismatched = alignment = None
    if kind == "CAE":
        predicted, own = torch.cat(latents["predicted"]), torch.cat(latents["own"])  # [n, M, D]
        cosine = float(F.cosine_similarity(predicted, own, dim=-1).mean())
        mismatched = float(F.cosine_similarity(predicted, own.roll(1, dims=0), dim=-1).mean())  # the next scene's
        alignment = mean["alignment"]
    return MIMResult(kind, ratio, mean["reconstruction"], mean["zero"], norm_pix, cosine, mismatched, alignment,
                     len(scenes), int(masks[0].sum()), config.seed)
