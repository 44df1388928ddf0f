"""DINO and DILEMMA recipes side by side: k-NN and object probe of the Lab after a short CPU run.

    nice -n 5 python bench/bench_dino_recipe.py [--steps 150] [--batch-size 32] [--image-size 48] [--seeds 0,1]
        [--recipes sinkhorn-koleo-sincos,sinkhorn-koleo] [--n-test 600]
    nice -n 5 python bench/bench_dino_recipe.py --image-size 96 --recipes dilemma-learned,dilemma-sincos ...
    nice -n 5 python bench/bench_dino_recipe.py --image-size 96 --score assets/models/patchlens-dino.safetensors ...

Each recipe of ``RECIPES`` (`ssl_core.train.dino.DINORecipe` settings; ``earlier``: those the first bundled
``patchlens-dino`` was trained with) is trained for ``--steps`` steps on one torch thread for each seed, and the
saved teacher is scored with the Lab's probes (`ssl_core.lab`: k-NN object accuracy of the class token, linear
object probe's balanced accuracy) on held-out scenes drawn at the training size, beside the Lab's untrained
baseline (``random-tiny``) and each seed's own initialisation scored the same way. Also reported: the collapse
monitors at the end of the run (teacher entropy, near 1 for a uniform teacher; teacher usage, near 0 when the
batch picks one prototype; student spread, near 0 when all embeddings are alike). DILEMMA recipes
(`ssl_core.train.dilemma`) also report their detection head's balanced accuracy at the end of the run and the Lab's
location probe (ROC AUC of a linear probe on the saved teacher's tokens, 80 / 40 scenes); the columns are "-" for
DINO. The sampling error of an accuracy p on n test scenes is about 2 sqrt(p (1 - p) / n) at 95%: +-0.07 at 150
scenes, +-0.035 at 600.
"""
from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from machine import record  # noqa: E402

from ssl_core import load_encoder  # noqa: E402
from ssl_core.lab import LabConfig, encode_scenes, knn_probe, location_probe, object_probe  # noqa: E402
from ssl_core.render.tables import markdown_table  # noqa: E402
from ssl_core.train.common import Objective, TrainConfig, run_training, save_weights  # noqa: E402
from ssl_core.train.dilemma import DILEMMAObjective  # noqa: E402
from ssl_core.train.dino import DINOObjective, DINORecipe  # noqa: E402


def dino(label: str, recipe: DINORecipe) -> tuple[str, str, Callable[[TrainConfig], Objective]]:
    return label, "dino", lambda config: DINOObjective(config, recipe)


def dilemma(label: str, sincos_positions: bool) -> tuple[str, str, Callable[[TrainConfig], Objective]]:
    return label, "dilemma", lambda config: DILEMMAObjective(config, sincos_positions=sincos_positions)


RECIPES = {  # key -> (label, method, objective factory); every setting that differs between them is spelt out
    "sinkhorn-koleo-sincos": dino("Sinkhorn-Knopp + KoLeo 0.1, positions from 2D sin-cos (the default)", DINORecipe(
        centering="sinkhorn", koleo_weight=0.1, sincos_positions=True)),
    "sinkhorn-koleo": dino("Sinkhorn-Knopp + KoLeo 0.1, timm's random positions", DINORecipe(
        centering="sinkhorn", koleo_weight=0.1, sincos_positions=False)),
    "sinkhorn": dino("Sinkhorn-Knopp, no KoLeo", DINORecipe(centering="sinkhorn", koleo_weight=0.0,
                                                            sincos_positions=False)),
    "ema": dino("EMA centring (DINO's), no KoLeo", DINORecipe(centering="ema", koleo_weight=0.0,
                                                              sincos_positions=False)),
    "ema-koleo": dino("EMA centring + KoLeo 0.1", DINORecipe(centering="ema", koleo_weight=0.1, sincos_positions=False)),
    "earlier": dino("earlier (the first bundled patchlens-dino)", DINORecipe(
        out_dim=1024, global_scale=(0.4, 1.0), local_scale=(0.08, 0.4), jitter=1.0, gray_p=0.2, freeze_prototypes=0.0,
        centering="ema", koleo_weight=0.0, sincos_positions=False)),
    "dilemma-sincos": dilemma("DILEMMA, position embeddings from 2D sin-cos (the default)", True),
    "dilemma-learned": dilemma("DILEMMA, position embeddings from timm's random init", False),
}


def probe(weights: Path | None, image_size: int, config: LabConfig, location: bool = False,
          ) -> tuple[float, float, float | None]:
    """(k-NN accuracy of the class token, object probe balanced accuracy, location probe ROC AUC when asked) of a
    weights file (None: untrained)."""
    encoder = load_encoder("random-tiny", weights=weights, pretrained=weights is not None, device="cpu",
                           image_size=image_size, cache=None)
    scenes = encode_scenes(encoder, config)
    auc = location_probe(encoder, scenes, config).auc if location else None
    return knn_probe(encoder, scenes, config).class_token, object_probe(scenes, config).balanced_accuracy, auc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=48)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--recipes", default="sinkhorn-koleo-sincos,sinkhorn-koleo",
                        help=f"comma-separated, from {', '.join(RECIPES)}")
    parser.add_argument("--n-test", type=int, default=600, help="held-out test scenes of the probes")
    parser.add_argument("--print-only", action="store_true", help="print, do not append to docs/benchmarks.md")
    parser.add_argument("--score", nargs="+", type=Path, metavar="WEIGHTS",
                        help="no training: score these weights files (e.g. the bundled models) beside random-tiny")
    args = parser.parse_args()
    torch.set_num_threads(1)
    lab = LabConfig(n_train=300, n_test=args.n_test, seed=0)
    if args.score:
        return score_files(args.score, args.image_size, lab, args.print_only)
    keys = args.recipes.split(",")
    location = any(RECIPES[key][1] == "dilemma" for key in keys)  # DILEMMA in the run: its columns too
    rows = [["random-tiny (untrained)", "-", "-", *scores(None, args.image_size, lab, location), "-", "-", "-"]
            + (["-"] if location else [])]
    with tempfile.TemporaryDirectory() as scratch:
        for seed in [int(s) for s in args.seeds.split(",")]:
            rows += seed_rows(seed, keys, args, lab, Path(scratch), location)
    columns = ["recipe", "seed", "train s", "k-NN (class token)", "object probe (balanced)"]
    columns += ["location probe (ROC AUC)"] if location else []
    columns += ["teacher entropy (end)", "teacher usage (end)", "spread (end)"]
    columns += ["detection head (end, balanced)"] if location else []
    methods = "DINO and DILEMMA" if location else "DINO"
    record(f"{methods} recipes after {args.steps} CPU steps of {args.batch_size} images at {args.image_size} px",
           markdown_table(columns, rows),
           f"Lab probes on {lab.n_train} / {lab.n_test} held-out scenes at {args.image_size} px (seed 0); "
           "6 classes, majority rate about 0.2."
           + (f" Location probe: swap ratio {lab.swap_ratio}, chance 0.5." if location else ""),
           print_only=args.print_only)


def scores(weights: Path | None, image_size: int, lab: LabConfig, location: bool) -> list[str]:
    """The probes' cells of one weights file: k-NN, object probe and, with ``location``, the location AUC."""
    knn, objects, auc = probe(weights, image_size, lab, location)
    return [f"{knn:.3f}", f"{objects:.3f}"] + ([f"{auc:.3f}"] if location else [])


def seed_rows(seed: int, keys: list[str], args: argparse.Namespace, lab: LabConfig, scratch: Path,
              location: bool) -> list[list[object]]:
    """One seed: each distinct initialisation scored untrained (once), then each recipe trained and scored."""
    rows, initialisations = [], set()
    for key in keys:
        label, method, build = RECIPES[key]
        config = TrainConfig(method=method, name=f"{key}-{seed}", out_dir=scratch, steps=args.steps,
                             batch_size=args.batch_size, seed=seed, image_size=args.image_size, device="cpu")
        torch.manual_seed(seed)
        objective = build(config)
        start_weights = save_weights(objective.teacher.state_dict(), scratch / "init.safetensors", {})
        fingerprint = hashlib.sha256(start_weights.read_bytes()).hexdigest()
        if fingerprint not in initialisations:  # the weights this recipe's run starts from
            initialisations.add(fingerprint)
            rows.append([f"untrained (this seed's initialisation for {key})", seed, "-",
                         *scores(start_weights, args.image_size, lab, location), "-", "-", "-"]
                        + (["-"] if location else []))
        start = time.perf_counter()
        result = run_training(objective, config, torch.device("cpu"))
        seconds, final = time.perf_counter() - start, result.final_losses
        detection = final.get("location_balanced_acc")
        rows.append([label, seed, f"{seconds:.0f}", *scores(result.weights_path, args.image_size, lab, location),
                     f"{final['teacher_entropy']:.2f}", f"{final['teacher_usage']:.2f}", f"{final['spread']:.2f}"]
                    + ([f"{detection:.3f}" if detection is not None else "-"] if location else []))
        print(" | ".join(str(cell) for cell in rows[-1]), flush=True)  # progress: each run as it ends
    return rows


def score_files(paths: list[Path], image_size: int, lab: LabConfig, print_only: bool) -> None:
    """The same probes on weights files already trained, beside the untrained baseline."""
    rows = []
    for label, weights in [("random-tiny (untrained)", None)] + [(str(p), p) for p in paths]:
        knn, objects, _ = probe(weights, image_size, lab)
        rows.append([label, f"{knn:.3f}", f"{objects:.3f}"])
        print(" | ".join(rows[-1]), flush=True)
    record(f"Weights files scored at {image_size} px", markdown_table(
        ["weights", "k-NN (class token)", "object probe (balanced)"], rows),
        f"Lab probes on {lab.n_train} / {lab.n_test} held-out scenes at {image_size} px (seed 0); "
        "6 classes, majority rate about 0.2.", print_only=print_only)


if __name__ == "__main__":
    main()
