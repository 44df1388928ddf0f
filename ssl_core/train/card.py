"""The model card written next to each trained model: command, seed, hardware, steps, losses, budget, settings."""
from __future__ import annotations

import json
import os
import platform
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ssl_core.system import hardware

if TYPE_CHECKING:  # types only: common.py imports this module
    from ssl_core.train.common import Objective, TrainConfig, TrainResult


def budget_note(config: TrainConfig, device: torch.device, steps: int, wall_s: float) -> str:
    minutes = wall_s / 60
    budget = f" (budget {config.max_seconds:.0f} s)" if config.max_seconds else ""
    retrain = (f"`patchlens train --method {config.method} --name {config.name} --steps {max(20000, steps * 10)} "
               f"--batch-size 256 --overwrite`")
    if device.type == "cuda":
        return (f"Trained on a GPU ({torch.cuda.get_device_name(device)}) for {minutes:.1f} minutes{budget}: "
                f"{steps} steps of {config.batch_size} images.")
    return (f"Trained on a {os.cpu_count()}-core CPU ({torch.get_num_threads()} thread(s)) for {minutes:.1f} minutes: "
            f"a small budget{budget} ({steps} steps of {config.batch_size} images), so these features are far from "
            f"what the objective reaches with more compute. Retrain on a GPU with {retrain} for better features.")


def write_model_card(result: TrainResult, config: TrainConfig, device: torch.device, objective: Objective) -> Path:
    import timm

    params = sum(p.numel() for p in objective.parameters())
    losses = ", ".join(f"{k} {v:.4g}" for k, v in result.final_losses.items())
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items() if k != "command"}
    settings["lr"] = config.lr if config.lr is not None else objective.default_lr
    if method_settings := objective.settings(result.steps):
        settings[config.method] = method_settings
    lines = [
        f"# {result.name}",
        "",
        f"A `{config.arch}` encoder trained by PatchLens on the parts world (`ssl_core/data/partsworld.py`) with the "
        f"**{config.method}** objective ({(objective.__doc__ or '').strip().splitlines()[0]}).",
        "",
        f"- command: `{config.command}`",
        f"- seed: {config.seed}",
        f"- hardware: {hardware(device)}",
        f"- software: torch {torch.__version__}, timm {timm.__version__}, Python {platform.python_version()}",
        f"- steps: {result.steps} x batch {config.batch_size} at {config.image_size} px "
        f"({result.steps * config.batch_size} generated images)",
        f"- wall time: {result.wall_s / 60:.1f} min ({result.wall_s / result.steps:.2f} s/step)",
        f"- final losses (mean over the last 10% of steps): {losses}",
        f"- trainable parameters during training: {params / 1e6:.2f}M (heads and decoders included)",
        f"- weights: `{result.weights_path.name}` (float16 safetensors); loss log: `{result.log_path.name}`",
        "",
        "## Budget",
        "",
        budget_note(config, device, result.steps, result.wall_s),
        "",
        "## Load",
        "",
        "```python",
        "from ssl_core import load_encoder",
        f'encoder = load_encoder("{config.arch}", weights="{result.weights_path.name}")  '
        f'# or load_encoder("{result.name}") when it is the bundled file',
        "```",
        "",
        "## Settings",
        "",
        "```json",
        json.dumps(settings, indent=2),
        "```",
        "",
    ]
    result.card_path.write_text("\n".join(lines))
    return result.card_path
