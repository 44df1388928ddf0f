"""Two pictures side by side with lines between corresponding patches (best buddies). No analysis here."""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from ssl_core.render.draw import PALETTE


def correspondence_picture(image_a: np.ndarray, image_b: np.ndarray, patches_a: np.ndarray, patches_b: np.ndarray,
                           patch_size: int, gap: int = 16, height: int = 384) -> np.ndarray:
    """image_a, image_b: [H, W, 3] uint8 (the processed images); patches_*: [M, 2] (row, col) pairs.

    Both pictures are scaled to ``height`` and put side by side; each pair is a line between patch centres
    with a dot at each end, coloured from the palette in order (most similar first). -> [height, W', 3] uint8.
    """
    scale_a, scale_b = height / image_a.shape[0], height / image_b.shape[0]
    width_a, width_b = round(image_a.shape[1] * scale_a), round(image_b.shape[1] * scale_b)
    sheet = Image.new("RGB", (width_a + gap + width_b, height), (255, 255, 255))
    sheet.paste(Image.fromarray(image_a).resize((width_a, height), Image.Resampling.BICUBIC), (0, 0))
    sheet.paste(Image.fromarray(image_b).resize((width_b, height), Image.Resampling.BICUBIC), (width_a + gap, 0))
    draw = ImageDraw.Draw(sheet)
    for i, ((ra, ca), (rb, cb)) in enumerate(zip(patches_a, patches_b)):
        colour = tuple(int(v) for v in PALETTE[i % len(PALETTE)])
        start = ((ca + 0.5) * patch_size * scale_a, (ra + 0.5) * patch_size * scale_a)
        end = (width_a + gap + (cb + 0.5) * patch_size * scale_b, (rb + 0.5) * patch_size * scale_b)
        draw.line([start, end], fill=colour, width=2)
        for x, y in (start, end):
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour, outline=(255, 255, 255))
    return np.asarray(sheet)


__all__ = ["correspondence_picture"]
