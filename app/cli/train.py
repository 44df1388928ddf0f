"""``patchlens train``: train a bundled-size encoder on the parts world with one objective."""
from __future__ import annotations

import argparse
import shlex
import sys

from app.cli.main import command, positive_int, tqdm_progress


def train_command_line(args: argparse.Namespace) -> str:
    """The canonical command that repeats this run (recorded in the model card)."""
    parts = ["patchlens", "train", "--method", args.method, "--out", args.out, "--steps", str(args.steps),
             "--batch-size", str(args.batch_size), "--seed", str(args.seed)]
    optional = {"--name": args.name, "--lr": args.lr, "--image-size": args.image_size, "--device": args.device,
                "--threads": args.threads, "--workers": args.workers, "--max-seconds": args.max_seconds}
    for flag, value in optional.items():
        if value is not None:
            parts += [flag, str(value)]
    return shlex.join(parts + (["--overwrite"] if args.overwrite else []))


@command("train", "train an encoder on the parts world (supervised, dino, mae, cae, dilemma)")
def _train(parser: argparse.ArgumentParser):
    from ssl_core.models.registry import BUNDLED_DIR
    from ssl_core.train import METHODS

    parser.add_argument("--method", required=True, choices=METHODS, help="training objective")
    parser.add_argument("--out", default=str(BUNDLED_DIR), help="output folder for <name>.safetensors, .md, "
                        "and .losses.csv; weights already there are kept unless --overwrite")
    parser.add_argument("--overwrite", action="store_true", help="replace weights already at <out>/<name>.safetensors "
                        "(e.g. a bundled model)")
    parser.add_argument("--steps", type=positive_int, default=1000, help="optimiser steps")
    parser.add_argument("--batch-size", type=positive_int, default=64, help="images per step")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default=None, help="file stem, e.g. patchlens-dino (default: the method's bundled name)")
    parser.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the method's)")
    parser.add_argument("--image-size", type=int, default=None, help="training image size (default: 96)")
    parser.add_argument("--device", default=None, help="cpu, cuda ... (default: cuda when present)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--workers", type=int, default=None, help="image-generating DataLoader workers")
    parser.add_argument("--max-seconds", type=float, default=None, help="wall-clock budget: after 10 timed steps the "
                        "run is shortened to fit it (schedules follow the shorter run)")

    def run(args: argparse.Namespace) -> int:
        from ssl_core.train import train

        options = {k: v for k, v in {"lr": args.lr, "image_size": args.image_size, "threads": args.threads,
                                     "workers": args.workers, "max_seconds": args.max_seconds}.items()
                   if v is not None}
        result = train(args.method, out_dir=args.out, steps=args.steps, batch_size=args.batch_size, seed=args.seed,
                       device=args.device, name=args.name, progress=tqdm_progress(f"training {args.method}", unit="step"),
                       command=train_command_line(args), overwrite=args.overwrite, **options)
        losses = ", ".join(f"{k} {v:.4g}" for k, v in result.final_losses.items())
        print(f"trained {result.name} ({args.method}) for {result.steps} steps in {result.wall_s / 60:.1f} min; "
              f"final {losses}", file=sys.stderr)
        for path in (result.weights_path, result.card_path, result.log_path):
            print(path)
        return 0
    return run


if __name__ == "__main__":  # `python -m app.cli.train train ...` works before `train` is listed in COMMAND_MODULES
    from app.cli.main import main

    raise SystemExit(main(sys.argv[1:]))
