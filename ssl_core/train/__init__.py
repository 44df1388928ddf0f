"""Training PatchLens's bundled encoders on the parts world.

    from ssl_core.train import train
    result = train("dino", out_dir="runs", steps=200, batch_size=64, seed=0)
    result.weights_path, result.final_losses

One module per objective (`supervised`, `dino`, `mae`, `cae`, `dilemma`), each an `Objective` that the common
loop (`common.run_training`) drives; the outputs are ``<name>.safetensors`` (float16, encoder keys as timm names
them, so `ssl_core.load_encoder(arch, weights=FILE)` reads them), ``<name>.losses.csv`` and a model card
``<name>.md``. On a GPU the forward runs under bf16 autocast.
"""
from __future__ import annotations

import importlib
import shlex
from pathlib import Path

import torch

from ssl_core.errors import BadRequest
from ssl_core.models.registry import BUNDLED_DIR, bundled_name_for
from ssl_core.progress import ProgressFn
from ssl_core.train.common import Objective, TrainConfig, TrainResult, run_training

OBJECTIVES: dict[str, str] = {  # method -> module:class
    "supervised": "ssl_core.train.supervised:SupervisedObjective",
    "dino": "ssl_core.train.dino:DINOObjective",
    "mae": "ssl_core.train.mae:MAEObjective",
    "cae": "ssl_core.train.cae:CAEObjective",
    "dilemma": "ssl_core.train.dilemma:DILEMMAObjective",
}
METHODS = tuple(OBJECTIVES)


def check_method(method: str) -> str:
    if method not in OBJECTIVES:
        raise BadRequest(f"unknown training method '{method}' (choose from {', '.join(METHODS)})")
    return method


def build_objective(config: TrainConfig) -> Objective:
    """The `Objective` of ``config.method``, freshly initialised."""
    module_name, class_name = OBJECTIVES[check_method(config.method)].split(":")
    return getattr(importlib.import_module(module_name), class_name)(config)


def train(method: str, out_dir: str | Path = BUNDLED_DIR, steps: int = 1000, batch_size: int = 64, seed: int = 0,
          device: str | torch.device | None = None, progress: ProgressFn | None = None, name: str | None = None,
          overwrite: bool = False, **options: object) -> TrainResult:
    """Train one bundled-size encoder with ``method`` and write its weights, loss log and model card to ``out_dir``.

    Weights already at ``out_dir/<name>.safetensors`` (the bundled model, by default) are refused before any step
    unless ``overwrite``. ``options`` are further `TrainConfig` fields (lr, image_size, threads, workers, log_every,
    command ...).
    """
    name = name or bundled_name_for(check_method(method))
    existing = Path(out_dir) / f"{name}.safetensors"
    if existing.exists() and not overwrite:
        raise BadRequest(f"{existing} exists; training would replace it. Pass --overwrite (overwrite=True) to "
                         "replace it, or choose another --out folder or --name.")
    arguments = [repr(method)] + [f"{k}={v!r}" for k, v in dict(
        out_dir=str(out_dir), steps=steps, batch_size=batch_size, seed=seed, name=name,
        **({"overwrite": True} if overwrite else {}), **options).items()]
    options.setdefault("command", "python -c " + shlex.quote(
        f"from ssl_core.train import train; train({', '.join(arguments)})"))
    config = TrainConfig(method=method, name=name, out_dir=Path(out_dir), steps=steps, batch_size=batch_size,
                         seed=seed, device=None if device is None else str(device), **options)
    if config.threads:
        torch.set_num_threads(int(config.threads))
    torch.manual_seed(config.seed)
    target = torch.device(config.device) if config.device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return run_training(build_objective(config), config, target, progress)


__all__ = ["train", "build_objective", "TrainConfig", "TrainResult", "Objective", "METHODS"]
