"""``patchlens tile``: patch tokens of an image larger than one forward pass takes, from overlapping windows.

    patchlens tile big.jpg --model dinov2-vits14 --window 518 --out big.npz

writes ``big.npz`` (``patch_tokens`` [h, w, D] float32, ``grid_hw``, ``window_px``, ``overlap_px``, ``meta``) and
``big.png``, a PCA-to-RGB picture of the stitched grid next to the image. The tokens are not those of one forward
pass over the whole image (attention is global; see `ssl_core.features.tiling`).
"""
from __future__ import annotations

import argparse
import json
import sys

from app.cli.main import add_model_args, command, load_model_from_args, positive_int, tqdm_progress


@command("tile", "patch tokens of a large image from overlapping windows (sliding-window tiling), with a PCA picture")
def _tile(parser: argparse.ArgumentParser):
    parser.add_argument("image", help="image file")
    add_model_args(parser)
    parser.add_argument("--short-side", type=positive_int, default=None,
                        help="resize the image's short side to this many px first (default: its own size)")
    parser.add_argument("--window", type=positive_int, default=None,
                        help="window side in px (default: the model's image size)")
    parser.add_argument("--overlap", type=int, default=None, help="overlap of neighbouring windows in px "
                        "(default: a quarter window)")
    parser.add_argument("--layer", type=int, default=None, help="block index (default: the final normed tokens)")
    parser.add_argument("--out", required=True, help="output .npz; the PCA picture goes next to it as .png")

    def run(args: argparse.Namespace) -> int:
        import numpy as np
        from PIL import Image

        from ssl_core.analyses.pca import pca_rgb_each
        from ssl_core.data.images import ResizePolicy, load_image
        from ssl_core.features.export import features_meta, write_npz
        from ssl_core.features.tiling import native_image, plan_windows, tiled_patch_tokens
        from ssl_core.render.draw import overlay, panel, unit_rgb

        encoder = load_model_from_args(args)
        print(encoder.describe(), file=sys.stderr)
        if args.short_side:
            image = ResizePolicy(short_side=args.short_side, patch_size=encoder.patch_size,
                                 max_aspect=float("inf")).apply(load_image(args.image))
        else:
            image = native_image(encoder, args.image)
        window = args.window or encoder.spec.image_size
        overlap = window // 4 if args.overlap is None else args.overlap
        grid_hw, windows = plan_windows(encoder, image, window, overlap)
        print(f"{image.size[0]}x{image.size[1]} px, {grid_hw[0]}x{grid_hw[1]} patches, {len(windows)} windows of "
              f"{window} px overlapping by {overlap} px", file=sys.stderr)
        tokens = tiled_patch_tokens(encoder, image, window, overlap, args.layer, tqdm_progress("windows", "win"))
        out = write_npz(args.out, {
            "patch_tokens": tokens.numpy(), "grid_hw": np.array(grid_hw), "window_px": np.array(window),
            "overlap_px": np.array(overlap), "meta": np.array(json.dumps(features_meta(encoder)))})
        pixels = np.asarray(image)
        [pca] = pca_rgb_each([tokens])
        picture = panel([pixels, overlay(pixels, unit_rgb(pca.rgb), alpha=1.0)], ["image", "PCA of tiled tokens"], cell=512)
        Image.fromarray(picture).save(out.with_suffix(".png"))
        print(f"wrote {out} ({grid_hw[0]}x{grid_hw[1]}x{tokens.shape[-1]}) and {out.with_suffix('.png')}",
              file=sys.stderr)
        return 0
    return run
