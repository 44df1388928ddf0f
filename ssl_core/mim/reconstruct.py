"""What an MAE makes of a masked image: the masked input, its reconstruction, and where it errs.

Image policy: an MAE works at its native square size (224 px for the MAE release, 96 px for PatchLens's
bundled model), so an image is loaded with `ssl_core.data.images.load_image`, its short side resized to that size
(bicubic) and the long side center-cropped (`square_crop`). Nothing is squashed; the edges of a long image
are cut off.

Outputs (`ReconstructionResult`): the masked input (hidden patches grey), the decoder's output for every
patch, that output pasted into the hidden patches of the true image (visible patches are the true pixels,
unchanged), a per-patch error map (the model's own loss per patch: mean squared error against its target),
and the loss over the hidden patches. Models trained on normalised-pixel targets (``norm_pix_loss``) predict
each patch up to its mean and std; their reconstruction is shown de-normalised with each patch's true mean and
std, so the colour and brightness of hidden patches come from the real image (``display_note`` says so).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from ssl_core.data.images import ImageSource, load_image
from ssl_core.errors import BadRequest
from ssl_core.mim.mae import MaskedAutoencoder, patch_statistics

MASK_FILL = (128, 128, 128)  # how hidden patches look in the masked input


@dataclass
class ReconstructionResult:
    """One MAE reconstruction. Pictures are uint8 RGB [S, S, 3]; maps are per patch [h, w]."""

    image: np.ndarray  # the prepared input (square, native size)
    masked: np.ndarray  # the input with hidden patches filled grey
    reconstruction: np.ndarray  # the decoder's output for every patch
    pasted: np.ndarray  # the reconstruction in hidden patches, the true image in visible ones
    error_map: np.ndarray  # [h, w] float32: the model's loss per patch (MSE against its target)
    mask: np.ndarray  # [h, w] bool, True = hidden
    loss: float  # mean of error_map over hidden patches (NaN when none is hidden)
    norm_pix: bool  # targets are per-patch normalised pixels
    display_note: str  # how the reconstruction is shown, for the UI
    patch_size: int

    @property
    def grid_hw(self) -> tuple[int, int]:
        return tuple(self.mask.shape)  # type: ignore[return-value]

    @property
    def num_hidden(self) -> int:
        return int(self.mask.sum())


NOTE_NORM_PIX = ("This model predicts each patch's pixels normalised by that patch's own mean and std; the "
                 "reconstruction is shown de-normalised with each patch's TRUE mean and std (from the original "
                 "image), so the colour and brightness of hidden patches are not the model's prediction.")
NOTE_PIXELS = "This model predicts pixels directly; the reconstruction is shown as predicted (clipped to [0, 1])."


def square_crop(image: Image.Image, size: int) -> Image.Image:
    """Resize the short side to ``size`` (bicubic) and center-crop the long side: [size, size] RGB."""
    w, h = image.size
    scale = size / min(w, h)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    resized = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return resized.crop((left, top, left + size, top + size))


def centre_square(source: ImageSource | Image.Image) -> Image.Image:
    """The largest centred square of an image at its own resolution: the part `square_crop` keeps."""
    image = load_image(source)
    w, h = image.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return image.crop((left, top, left + side, top + side))


def prepare_image(mae: MaskedAutoencoder, source: ImageSource | Image.Image) -> np.ndarray:
    """An image as this MAE sees it: [S, S, 3] uint8 at its native size (see the module docstring)."""
    return np.asarray(square_crop(load_image(source), mae.img_size), dtype=np.uint8)


def fill_patches(image: np.ndarray, mask: np.ndarray, patch_size: int, fill: np.ndarray | tuple) -> np.ndarray:
    """``image`` with the hidden patches of ``mask`` [h, w] taken from ``fill`` (an image or a colour)."""
    hidden = np.kron(mask, np.ones((patch_size, patch_size), dtype=bool))[..., None]  # [H, W, 1]
    return np.where(hidden, np.asarray(fill, dtype=np.uint8), image)


def to_uint8(imgs: torch.Tensor) -> np.ndarray:
    """[1, 3, H, W] in [0, 1] -> [H, W, 3] uint8"""
    return (imgs[0].permute(1, 2, 0).float().cpu().numpy() * 255).round().astype(np.uint8)


def predicted_images(mae: MaskedAutoencoder, imgs: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """Decoder output as images in [0, 1]. imgs: [N, 3, H, W] normalised (the truth), pred: [N, L, p*p*3].

    Normalised-pixel predictions are de-normalised with each true patch's mean and std.
    """
    if mae.norm_pix_loss:
        mean, std = patch_statistics(mae.patchify(imgs))
        pred = pred * std + mean
    return mae.denormalize(mae.unpatchify(pred)).clamp(0, 1)


def reconstruct(mae: MaskedAutoencoder, image: ImageSource | Image.Image | np.ndarray,
                mask: np.ndarray | torch.Tensor) -> ReconstructionResult:
    """Hide ``mask`` [h, w] (True = hidden) of an image and let the MAE fill it in."""
    mask = np.asarray(mask.cpu() if isinstance(mask, torch.Tensor) else mask, dtype=bool)
    if mask.shape != mae.grid_hw:
        raise BadRequest(f"mask is {mask.shape[0]}x{mask.shape[1]} patches; this MAE's grid is "
                         f"{mae.grid_hw[0]}x{mae.grid_hw[1]}")
    picture = prepare_image(mae, image)  # [S, S, 3]
    device = next(mae.parameters()).device
    pixels = torch.from_numpy(picture.copy()).permute(2, 0, 1)[None].float().div(255).to(device)  # [1, 3, S, S]
    imgs = mae.normalize(pixels)
    hidden = torch.from_numpy(mask.reshape(1, -1)).to(device)  # [1, L]
    with torch.inference_mode():
        latent, _, ids_restore = mae.forward_encoder(imgs, 0.0, mask=hidden)
        pred = mae.forward_decoder(latent, ids_restore)  # [1, L, p*p*3]
        losses = mae.patch_losses(imgs, pred)[0]  # [L]
        reconstruction = to_uint8(predicted_images(mae, imgs, pred))
    error_map = losses.float().cpu().numpy().reshape(mae.grid_hw)
    return ReconstructionResult(
        image=picture,
        masked=fill_patches(picture, mask, mae.patch_size, MASK_FILL),
        reconstruction=reconstruction,
        pasted=fill_patches(picture, mask, mae.patch_size, reconstruction),
        error_map=error_map,
        mask=mask,
        loss=float(error_map[mask].mean()) if mask.any() else float("nan"),
        norm_pix=bool(mae.norm_pix_loss),
        display_note=NOTE_NORM_PIX if mae.norm_pix_loss else NOTE_PIXELS,
        patch_size=mae.patch_size,
    )
