"""``patchlens reconstruct``: hide patches of an image, let an MAE fill them in, write the pictures and metrics.

    patchlens reconstruct cat.jpg --model mae-vitb16-visualize --mask random:0.75 --seed 0 --out recon/

writes ``input.png`` (the square image the MAE sees), ``masked.png``, ``reconstruction.png``, ``pasted.png``
(reconstruction in the hidden patches only), ``error.png`` (per-patch error heatmap on the hidden patches) and
``metrics.json`` (model, mask, loss over hidden patches, the per-patch error map and mask as lists).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from app.cli.main import add_model_args, command


@command("reconstruct", "hide patches of an image and let an MAE reconstruct them")
def _reconstruct(parser: argparse.ArgumentParser):
    from ssl_core.models.registry import DEFAULT_MAE, MAE_SOURCES

    parser.add_argument("image", help="image file")
    add_model_args(parser, default=DEFAULT_MAE)
    parser.description = (f"{parser.description}. MODEL: {', '.join(MAE_SOURCES)} (default {DEFAULT_MAE}), a "
                          f"checkpoint URL, a Hugging Face ViTMAE repository or a local file; with --weights FILE, "
                          f"MODEL may name the encoder's timm architecture.")
    parser.add_argument("--mask", default="random:0.75", help="random:RATIO | block:RATIO | grid | custom:r,c;r,c")
    parser.add_argument("--seed", type=int, default=0, help="seed of random and block masks")
    parser.add_argument("--out", required=True, help="output folder")

    def run(args: argparse.Namespace) -> int:
        from PIL import Image

        from app.views.reconstruct import error_picture
        from ssl_core.mim.mae_checkpoints import open_mae
        from ssl_core.mim.masks import parse_mask_spec
        from ssl_core.mim.reconstruct import reconstruct

        if args.image_size is not None:
            raise ValueError("--image-size does not apply: an MAE reconstructs at its own native size")
        spec = parse_mask_spec(args.mask)
        mae = open_mae(args.model, args.weights, args.device)
        print(f"MAE {mae.source}: {mae.grid_hw[0]}x{mae.grid_hw[1]} patches of {mae.patch_size} px"
              + ("" if mae.trained else " — UNTRAINED (random weights)"), file=sys.stderr)
        result = reconstruct(mae, args.image, spec.build(mae.grid_hw, args.seed))
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        pictures = {"input": result.image, "masked": result.masked, "reconstruction": result.reconstruction,
                    "pasted": result.pasted, "error": error_picture(result)}
        for name, picture in pictures.items():
            Image.fromarray(picture).save(out / f"{name}.png")
        metrics = {
            "image": str(args.image), "model": mae.source, "mask": args.mask, "mask_kind": spec.kind,
            "seed": args.seed, "grid_hw": list(result.grid_hw), "patch_size": result.patch_size,
            "image_size": mae.img_size, "num_hidden": result.num_hidden,
            "loss_hidden": None if math.isnan(result.loss) else result.loss, "norm_pix": result.norm_pix,
            "display_note": result.display_note, "error_map": result.error_map.round(6).tolist(),
            "hidden": result.mask.astype(int).tolist(),
        }
        (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
        loss = "n/a (nothing hidden)" if math.isnan(result.loss) else f"{result.loss:.4f}"
        print(f"hid {result.num_hidden}/{result.mask.size} patches ({spec.describe()}); loss over hidden patches "
              f"{loss}; wrote {', '.join(pictures)} .png and metrics.json to {out}", file=sys.stderr)
        return 0
    return run
