"""``patchlens heads``: where each block's heads look on your images, for one or more encoders.

    patchlens heads photos/ --models patchlens-sup patchlens-mae --out heads.html     # or .png, .npz

Per block and head: the mean attention distance (in pixels of the model's input, and relative to attention spread
evenly over the image) and the query-key NMI (0: every patch attends to the same places), averaged over the images
(`ssl_core.analyses.attention_range`). ``.html``: the interactive figure (a line per model, a dot per head); ``.png``:
the two curves, heads averaged; ``.npz``: ``{model}_distance_px``, ``_relative_distance`` and ``_nmi`` arrays
[blocks, heads] and ``models``. A table of the last block's numbers is printed either way.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from app.cli.gallery import load_images
from app.cli.main import command, load_model_from_args, tqdm_progress

SUFFIXES = (".html", ".png", ".npz")


@command("heads", "where each block's heads look on images: attention distance and query-key NMI per head, for one "
                  "or more encoders (.html, .png or .npz)")
def _heads(parser: argparse.ArgumentParser):
    parser.add_argument("images", nargs="+", help="image files or folders")
    parser.add_argument("--models", nargs="+", required=True, help="model names (see `patchlens models`) or timm ids")
    parser.add_argument("--image-size", type=int, default=None, help="short side images are resized to (all models)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when present)")
    parser.add_argument("--out", required=True, help="output file: .html (interactive), .png (curves) or .npz")

    def run(args: argparse.Namespace) -> int:
        out = Path(args.out)
        if out.suffix.lower() not in SUFFIXES:
            raise ValueError(f"--out {args.out}: the file must end in {', '.join(SUFFIXES)}")
        from ssl_core.analyses.attention_range import encoder_attention_range

        images = [image for _, image in load_images(args.images)]
        if not images:
            raise ValueError("no readable image among the inputs")
        results = {}
        for model in args.models:
            encoder = load_model_from_args(argparse.Namespace(model=model, weights=None, image_size=args.image_size,
                                                              device=args.device))
            results[encoder.display_name] = encoder_attention_range(encoder, images,
                                                                    progress=tqdm_progress(f"attention of {model}"))
        out.parent.mkdir(parents=True, exist_ok=True)
        write(results, out)
        for name, result in results.items():
            print(f"{name}: last block, {result.distance_px[-1].mean():.1f} px away on average "
                  f"({result.relative_distance[-1].mean():.2f} of uniform attention's), query-key NMI "
                  f"{result.nmi[-1].mean():.3f} ({result.images} images)", file=sys.stderr)
        print(f"wrote {out}", file=sys.stderr)
        return 0
    return run


def write(results: dict, out: Path) -> None:
    """The figure (.html), the curves picture (.png) or the arrays (.npz) of ``results`` (name -> AttentionRange)."""
    import numpy as np

    suffix = out.suffix.lower()
    if suffix == ".html":
        from ssl_core.render.figures import attention_range_figure

        attention_range_figure(results).write_html(out, include_plotlyjs=True)
    elif suffix == ".png":
        from PIL import Image

        from ssl_core.render.lines import attention_range_pictures

        Image.fromarray(np.concatenate(attention_range_pictures(results), axis=1)).save(out)
    else:
        arrays = {"models": np.array(list(results), dtype=str)}
        for name, result in results.items():
            arrays.update({f"{name}_distance_px": result.distance_px, f"{name}_relative_distance":
                           result.relative_distance, f"{name}_nmi": result.nmi})
        np.savez(out, **arrays)
