"""The README's picture of wrong positions (DILEMMA's question): the same patches of one scene swapped, each model's
P(swapped) per token as the Reconstruct tab draws it, with the ROC AUC.

    python scripts/positions_figure.py [--share 0.15] [--seed 0] [--out docs/screenshots/positions.png]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from app.views.reconstruct import SWAP_SOURCES, position_view
from app.views.result import SWAP_BOX
from ssl_core import load_encoder
from ssl_core.mim.reconstruct import centre_square
from ssl_core.models.registry import ASSETS_DIR
from ssl_core.render import draw

MODELS = ("patchlens-dilemma", "patchlens-mae", "patchlens-dino", "patchlens-sup", "random-tiny-sincos")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--image", default=str(ASSETS_DIR / "examples" / "partsworld_1.png"))
    parser.add_argument("--fit", nargs="+", default=[str(ASSETS_DIR / "examples" / f"partsworld_{i}.png")
                                                      for i in (2, 3, 4)], help="the other images the probe fits on")
    parser.add_argument("--share", type=float, default=0.15, help="share of the patches swapped")
    parser.add_argument("--seed", type=int, default=0, help="which patches")
    parser.add_argument("--out", default="docs/screenshots/positions.png")
    args = parser.parse_args()
    image = Image.open(args.image).convert("RGB")
    others = [Image.open(path).convert("RGB") for path in args.fit]
    pictures, titles = [], []
    for name in args.models:
        encoder = load_encoder(name, cache=None)
        view = position_view(encoder, image, others, args.share, SWAP_SOURCES[0], seed=args.seed)
        if not pictures:  # the scene as the first model sees it, with the swapped patches boxed
            scene = draw.enlarge(np.asarray(encoder.prepare(centre_square(image))), view.pictures["positions"].shape[0])
            swapped = view.numbers["swapped"]
            pictures.append(draw.mark_patches(scene, swapped, scene.shape[0] // swapped.shape[0], SWAP_BOX))
            titles.append(f"{int(swapped.sum())} patches swapped (boxed), {int(view.numbers['visible'].sum())} visibly")
        pictures.append(view.pictures["positions"])
        titles.append(f"{name}: ROC AUC {float(view.numbers['auc']):.2f}")
    sheet = draw.panel(pictures, titles, columns=3, cell=360)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(sheet).save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
