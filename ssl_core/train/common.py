"""What every training method shares: tensor augmentations, the AdamW + cosine loop, loss logs, weights and cards.

A method is an `Objective`: a module that turns a batch of parts-world images into a loss (`forward`), may
update something after each optimiser step (`after_step`: an EMA teacher), and says what to save (`export`).
`run_training` drives it: AdamW (no weight decay on biases, norms and tokens), linear warmup then cosine decay,
gradient clipping, bf16 autocast on a GPU, a loss log (``<name>.losses.csv``, one row per ``log_every`` steps,
means over those steps), float16 ``<name>.safetensors`` weights with metadata (method, steps, seed, loss) and a
model card ``<name>.md`` that records the exact command, seed, hardware, versions, run time and final losses.

Seeds: the run seed seeds torch (heads, masks, augmentations) and picks the parts-world training stream
(`ssl_core.data.partsworld.PartsWorldStream`); the same command on the same hardware repeats the same run.
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from ssl_core.data.partsworld import PartsWorldStream
from ssl_core.errors import BadRequest
from ssl_core.features.pixels import normalize_pixels
from ssl_core.models.registry import BUNDLED_DIR
from ssl_core.progress import ProgressFn
from ssl_core.system import shared_memory_free, usable_cores
from ssl_core.train.card import write_model_card
from ssl_core.train.outputs import LossLog, save_weights

logger = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------------------ config
WARMUP_STEPS = 3  # first steps of a run, not timed for its plan: they pay for start-up (loader workers, CUDA kernels)
CALIBRATION_STEPS = 10  # at this step a run with max_seconds sets its total, from the steps since WARMUP_STEPS
BUDGET_TOLERANCE = 1.1  # past max_seconds times this, a run stops at the next step whatever its plan said
@dataclass
class TrainConfig:
    """One training run. ``lr`` None takes the method's default; ``warmup_steps`` None is 10% of the steps."""

    method: str
    name: str  # file stem of the outputs, e.g. "patchlens-dino"
    out_dir: Path = BUNDLED_DIR
    steps: int = 1000
    batch_size: int = 64
    seed: int = 0
    lr: float | None = None  # peak learning rate
    min_lr_ratio: float = 0.01  # the cosine ends at lr * min_lr_ratio
    weight_decay: float = 0.05
    warmup_steps: int | None = None
    grad_clip: float = 3.0
    image_size: int = 96
    arch: str = "patchlens_vit_tiny_p8"
    device: str | None = None  # None: cuda when present
    workers: int | None = None  # DataLoader workers generating images (None: 0 on a CPU, up to 16 on a GPU)
    threads: int | None = None  # torch CPU threads (None: torch's default)
    log_every: int = 10
    command: str = ""  # how the run was started, for the model card
    max_seconds: float | None = None  # wall-clock budget: fewer steps when the measured speed needs it

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        for key in ("steps", "batch_size", "image_size", "log_every"):
            if int(getattr(self, key)) < 1:
                raise BadRequest(f"{key} must be at least 1, got {getattr(self, key)}")
        if self.batch_size < 2:
            raise BadRequest(f"batch_size must be at least 2, got {self.batch_size}")

    def warmup_for(self, total: int) -> int:
        """Warm-up steps of a run of ``total`` steps."""
        return int(self.warmup_steps) if self.warmup_steps is not None else max(1, total // 10)


@dataclass
class Batch:
    """One training batch of the parts-world stream, on the device."""

    images: torch.Tensor  # [B, 3, S, S] uint8
    labels: torch.Tensor  # [B] object classes (the supervised objective's targets)


@dataclass
class StepOutput:
    loss: torch.Tensor  # scalar, to minimise
    metrics: dict[str, float] = field(default_factory=dict)  # logged beside the loss (accuracy, spread ...)


class Objective(nn.Module):
    """A training method: subclasses set ``method`` and ``default_lr`` and implement `forward` and `export`."""

    method: str = ""
    default_lr: float = 1e-3

    def forward(self, batch: Batch, step: int, total: int) -> StepOutput:
        """A batch on the device (`Batch`) at step ``step`` of ``total`` -> loss and metrics."""
        raise NotImplementedError

    def after_step(self, step: int, total: int) -> None:
        """Called after each optimiser step (EMA teachers update here)."""

    def export(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """(state dict to save: encoder keys as timm names them, plus the method's extras; extra metadata)."""
        raise NotImplementedError

    def settings(self, total: int) -> dict[str, object]:
        """The method's own settings for a run of ``total`` steps, as the model card records them (none by default)."""
        return {}


@dataclass
class TrainResult:
    name: str
    method: str
    weights_path: Path
    card_path: Path
    log_path: Path
    steps: int
    wall_s: float
    final_losses: dict[str, float]  # means over the last 10% of steps
    history: list[dict[str, float]]  # the logged rows


# ------------------------------------------------------------------------------------------------ augmentations
def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 [B, 3, H, W] -> float in [0, 1]."""
    return images.float().div_(255.0)


def normalize(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] RGB [B, 3, H, W] -> ImageNet-normalised, as the bundled models take it (`normalize_pixels`)."""
    return normalize_pixels(x)


def _uniform(n: int, low: float, high: float, generator: torch.Generator | None) -> torch.Tensor:
    """n draws from U[low, high): [n]."""
    return torch.rand(n, generator=generator) * (high - low) + low


def random_resized_crop(x: torch.Tensor, size: int, scale: tuple[float, float] = (0.3, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3), flip: bool = True,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """A random crop of each image (area fraction in ``scale``, aspect in ``ratio``), resized to ``size``,
    mirrored with probability 0.5. x: [B, 3, H, W] -> [B, 3, size, size] (bilinear)."""
    B = x.shape[0]
    area = _uniform(B, *scale, generator)
    aspect = torch.exp(_uniform(B, math.log(ratio[0]), math.log(ratio[1]), generator))
    w = torch.sqrt(area * aspect).clamp(max=1.0)  # crop width and height as fractions of the image side
    h = torch.sqrt(area / aspect).clamp(max=1.0)
    cx = (torch.rand(B, generator=generator) * 2 - 1) * (1 - w)  # centre in [-1, 1] coordinates
    cy = (torch.rand(B, generator=generator) * 2 - 1) * (1 - h)
    sign = torch.where(torch.rand(B, generator=generator) < 0.5, -1.0, 1.0) if flip else torch.ones(B)
    theta = torch.zeros(B, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = w * sign, cx
    theta[:, 1, 1], theta[:, 1, 2] = h, cy
    grid = F.affine_grid(theta.to(x), [B, 3, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] -> luma [B, 1, H, W]."""
    return (x * x.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)


def color_jitter(x: torch.Tensor, brightness: float = 0.4, contrast: float = 0.4, saturation: float = 0.2,
                 p: float = 0.8, p_gray: float = 0.2, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random brightness, contrast and saturation (each image with probability p), then grayscale with
    probability ``p_gray``. x: [B, 3, H, W] in [0, 1] -> same, clipped to [0, 1]."""
    B = x.shape[0]

    def factors(strength: float) -> torch.Tensor:  # [B, 1, 1, 1]: 1 +- strength with probability p, else 1
        f = _uniform(B, 1 - strength, 1 + strength, generator)
        return torch.where(torch.rand(B, generator=generator) < p, f, torch.ones(B)).to(x).view(B, 1, 1, 1)

    x = x * factors(brightness)
    mean = grayscale(x).mean(dim=(2, 3), keepdim=True)
    x = (x - mean) * factors(contrast) + mean
    gray = grayscale(x)
    x = (x - gray) * factors(saturation) + gray
    to_gray = (torch.rand(B, generator=generator) < p_gray).to(x).view(B, 1, 1, 1)
    return (x * (1 - to_gray) + grayscale(x) * to_gray).clamp(0, 1)


# ------------------------------------------------------------------------------------------------ optimisation
def lr_at(step: int, total: int, peak: float, warmup: int, min_ratio: float) -> float:
    """Linear warmup to ``peak`` over ``warmup`` steps, then cosine decay to ``peak * min_ratio``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def cosine_ramp(step: int, total: int, start: float, end: float) -> float:
    """``start`` at step 0 to ``end`` at the last step along a half cosine (EMA momentum schedules)."""
    return end - (end - start) * 0.5 * (1 + math.cos(math.pi * step / max(1, total - 1)))


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: weight decay on matrices, none on biases, norms and learned tokens/embeddings."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        plain = param.ndim <= 1 or name.endswith(("token", "pos_embed")) or ".norm" in name
        (no_decay if plain else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def embedding_spread(x: torch.Tensor) -> float:
    """How spread out L2-normalised embeddings are across a batch: mean per-dimension std times sqrt(D).

    About 1 for random directions, 0 when every embedding is the same (collapse). x: [B, D].
    """
    z = F.normalize(x.detach().float(), dim=-1)
    return float(z.std(dim=0).mean() * math.sqrt(z.shape[-1]))


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


# ------------------------------------------------------------------------------------------------ the loop
PREFETCH = 2  # batches each loader worker keeps ready


def loader_workers(config: TrainConfig, device: torch.device, shm_free: int | None = None) -> int:
    """Loader processes: none on a CPU (they would take the training's cores); on a GPU one per usable core but one,
    at most 16, whose ready batches fit in half of ``shm_free`` (default: /dev/shm's; a container's 64 MB holds few,
    and a worker that finds it full dies with a bus error)."""
    if device.type != "cuda":
        return 0
    cores = min(16, usable_cores() - 1)
    shm_free = shared_memory_free() if shm_free is None else shm_free
    if shm_free is None:
        return max(0, cores)
    batch_bytes = config.batch_size * (3 * config.image_size ** 2 + 8)  # uint8 images and int64 labels
    workers = max(0, min(cores, shm_free // 2 // (PREFETCH * batch_bytes)))
    if workers < cores:
        logger.warning("%d loader worker(s): /dev/shm has %.0f MB free", workers, shm_free / 2 ** 20)
    return workers


def batches(config: TrainConfig, device: torch.device) -> Iterator[Batch]:
    """Endless batches of the run's parts-world stream."""
    workers = config.workers if config.workers is not None else loader_workers(config, device)
    stream = PartsWorldStream(config.seed, config.image_size, fields=("image", "label"))  # no part maps: unused here
    loader = DataLoader(stream, batch_size=config.batch_size, num_workers=workers, pin_memory=device.type == "cuda",
                        persistent_workers=workers > 0, prefetch_factor=PREFETCH if workers > 0 else None)
    for batch in loader:
        yield Batch(batch["image"].to(device, non_blocking=True), batch["label"].to(device, non_blocking=True))


def planned_steps(config: TrainConfig, done: int, elapsed_s: float, step_s: float) -> int:
    """The run's total steps: ``config.steps``, or fewer when ``max_seconds`` would be exceeded. ``done`` steps took
    ``elapsed_s`` (start-up included); each further one takes ``step_s``, as timed after the `WARMUP_STEPS` (the first
    steps wait for the loader's workers and load CUDA kernels: timed with the rest, they would make a GPU run plan
    a fraction of the steps its budget holds). Set once, at `CALIBRATION_STEPS`; schedules follow the new total."""
    if config.max_seconds is None:
        return config.steps
    return max(done + 1, min(config.steps, done + int((config.max_seconds - elapsed_s) / max(step_s, 1e-9))))


def over_budget(config: TrainConfig, elapsed_s: float) -> bool:
    """Whether a run with ``max_seconds`` has overrun it by `BUDGET_TOLERANCE` (steps slowed after the plan was set,
    e.g. when the data loader's first batches were ready ahead and later ones are not): it stops then."""
    return config.max_seconds is not None and elapsed_s > config.max_seconds * BUDGET_TOLERANCE


def train_step(objective: Objective, optimizer: torch.optim.Optimizer, batch: Batch, step: int, total: int, lr: float,
               config: TrainConfig, device: torch.device) -> dict[str, float]:
    """One optimiser step on ``batch`` at learning rate ``lr`` -> the step's metrics."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    with autocast(device):
        out = objective(batch, step, total)
    if not torch.isfinite(out.loss):
        raise FloatingPointError(f"{config.method}: the loss is {float(out.loss)} at step {step}")
    optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    grad_norm = nn.utils.clip_grad_norm_(objective.parameters(), config.grad_clip)
    optimizer.step()
    objective.after_step(step, total)
    return {"loss": float(out.loss.detach()), "grad_norm": float(grad_norm), **out.metrics}


def run_training(objective: Objective, config: TrainConfig, device: torch.device,
                 progress: ProgressFn | None = None) -> TrainResult:
    """Train ``objective`` for ``config.steps`` steps (fewer if ``max_seconds`` says so), then write weights,
    loss log and model card."""
    objective.to(device).train()
    optimizer = torch.optim.AdamW(parameter_groups(objective, config.weight_decay), lr=0.0, betas=(0.9, 0.95))
    peak = config.lr if config.lr is not None else objective.default_lr
    config.out_dir.mkdir(parents=True, exist_ok=True)
    log = LossLog(config.out_dir / f"{config.name}.losses.csv", config.log_every)
    start, total, step = time.perf_counter(), config.steps, 0
    warm = start
    try:
        for step, batch in enumerate(batches(config, device)):
            now = time.perf_counter()
            if step == WARMUP_STEPS:
                warm = now
            if step == CALIBRATION_STEPS:
                total = planned_steps(config, step, now - start, (now - warm) / (CALIBRATION_STEPS - WARMUP_STEPS))
            if step >= total:
                break
            lr = lr_at(step, total, peak, config.warmup_for(total), config.min_lr_ratio)
            metrics = train_step(objective, optimizer, batch, step, total, lr, config, device)
            elapsed = time.perf_counter() - start
            if step >= CALIBRATION_STEPS and over_budget(config, elapsed):
                total = step + 1
            log.add(step, step + 1 == total, lr, elapsed, metrics)
            if progress is not None:
                progress(step + 1, total)
    finally:
        log.close()
    return finish_training(objective, config, device, log, total, time.perf_counter() - start)


def finish_training(objective: Objective, config: TrainConfig, device: torch.device, log: LossLog, steps: int,
                    wall_s: float) -> TrainResult:
    """Write the weights and the model card of a finished run."""
    final = log.final()
    state_dict, extra_metadata = objective.export()
    weights_path = save_weights(state_dict, config.out_dir / f"{config.name}.safetensors", {
        "method": config.method, "steps": str(steps), "seed": str(config.seed), "loss": f"{final['loss']:.6g}",
        "arch": config.arch, "image_size": str(config.image_size), "command": config.command, **extra_metadata})
    result = TrainResult(name=config.name, method=config.method, weights_path=weights_path,
                         card_path=config.out_dir / f"{config.name}.md", log_path=log.path, steps=steps,
                         wall_s=wall_s, final_losses=final, history=log.history)
    write_model_card(result, config, device, objective)
    return result


def build_encoder(config: TrainConfig) -> nn.Module:
    """A fresh timm ViT of ``config.arch`` (no classifier, any input size), its weights drawn from torch's RNG."""
    from ssl_core.features.encoder import build_model
    from ssl_core.models.registry import resolve_spec

    model, _ = build_model(resolve_spec(config.arch))
    model.init_weights()  # build_model draws with a fixed seed; redraw from the run's seed
    return model
