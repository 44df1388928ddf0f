"""The README's picture of guided upsampling: a PCA map on the raw patch grid next to the guided one.

    python scripts/guided_figure.py [--model patchlens-sup] [--image-size 192] [--out docs/screenshots/guided_pca.png]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from ssl_core import load_encoder
from ssl_core.analyses.pca import pca_rgb
from ssl_core.analyses.upsample import upsample_difference, upsample_map
from ssl_core.models.registry import ASSETS_DIR
from ssl_core.render import draw


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="patchlens-sup")
    parser.add_argument("--image-size", type=int, default=192, help="short side the model sees")
    parser.add_argument("--image", default=str(ASSETS_DIR / "examples" / "chelsea.jpg"))
    parser.add_argument("--scale", type=int, default=4, help="output pixels per model pixel")
    parser.add_argument("--out", default="docs/screenshots/guided_pca.png")
    args = parser.parse_args()
    encoder = load_encoder(args.model, image_size=args.image_size, cache=None)
    [features] = encoder.extract([args.image])
    [rgb], _ = pca_rgb([features.patch_tokens])
    grid = draw.unit_rgb(rgb).astype(np.float32) / 255  # [h, w, 3]
    h, w = features.image.shape[:2]
    photo = np.asarray(Image.open(args.image).convert("RGB").resize((w * args.scale, h * args.scale), Image.BICUBIC))
    pictures = [photo, *((upsample_map(grid, photo, mode) * 255).clip(0, 255).astype(np.uint8)
                         for mode in ("nearest", "guided")), draw.apply_colormap(upsample_difference(grid, photo))]
    titles = ["image", f"PCA: raw {features.grid_hw[0]}x{features.grid_hw[1]} patch grid",
              "PCA: guided upsampling", "|guided - bilinear|"]
    sheet = draw.panel(pictures, titles, columns=4, cell=480)
    rows = np.where((sheet < 250).any(axis=(1, 2)))[0]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(sheet[: rows.max() + 7]).save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
