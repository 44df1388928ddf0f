"""Training: augmentations, schedule, each method learning on a CPU, saved files that load, the CLI, CAE and DILEMMA pieces."""
from __future__ import annotations

import csv
import json
import time

import numpy as np
import pytest
import torch
from safetensors import safe_open

from ssl_core import load_encoder
from ssl_core.models.registry import bundled_name_for
from ssl_core.train import METHODS, train
from ssl_core.train.common import (
    BUDGET_TOLERANCE,
    Objective,
    StepOutput,
    TrainConfig,
    color_jitter,
    embedding_spread,
    loader_workers,
    lr_at,
    random_resized_crop,
    run_training,
)

# Small and quick: 48 px images (a 6x6 grid), batch 8, a high enough rate to see the loss fall in a few steps.
QUICK = dict(steps=14, batch_size=8, seed=0, device="cpu", image_size=48, log_every=1)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_augmentations_are_identity_at_their_neutral_settings_and_random_otherwise():
    x = torch.rand(4, 3, 32, 32)
    same = random_resized_crop(x, 32, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=False)
    assert torch.allclose(same, x, atol=1e-5)
    assert torch.allclose(color_jitter(x, p=0.0, p_gray=0.0), x, atol=1e-6)
    gray = color_jitter(x, p=0.0, p_gray=1.0)
    assert torch.allclose(gray[:, 0], gray[:, 1]) and torch.allclose(gray[:, 1], gray[:, 2])
    generator = torch.Generator().manual_seed(0)
    crops = random_resized_crop(x, 16, generator=generator)
    assert crops.shape == (4, 3, 16, 16) and not torch.allclose(crops, random_resized_crop(x, 16, generator=generator))


def test_learning_rate_warms_up_then_decays_by_cosine():
    rates = [lr_at(s, 100, 1e-3, 10, 0.01) for s in range(100)]
    assert rates[0] == pytest.approx(1e-4) and rates[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(rates[9:], rates[10:]))
    assert rates[-1] == pytest.approx(1e-5, rel=0.05)


def test_embedding_spread_tells_collapse_from_spread():
    assert embedding_spread(torch.randn(256, 64)) == pytest.approx(1.0, abs=0.1)
    assert embedding_spread(torch.randn(1, 64).repeat(256, 1) + 1e-4 * torch.randn(256, 64)) < 0.01


@pytest.mark.parametrize("method", METHODS)
def test_each_method_learns_on_a_cpu_and_saves_weights_that_load(method, tmp_path):
    result = train(method, out_dir=tmp_path, **QUICK)
    losses = [row["loss"] for row in result.history]
    assert len(losses) == QUICK["steps"]
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4, losses  # averaged over 4 steps at each end

    with safe_open(str(result.weights_path), framework="pt") as f:
        meta = f.metadata()
        dtypes = {f.get_tensor(k).dtype for k in f.keys()}
    assert meta["method"] == method and meta["steps"] == "14" and meta["seed"] == "0" and float(meta["loss"]) > 0
    assert dtypes == {torch.float16}
    encoder = load_encoder(bundled_name_for(method), weights=result.weights_path, device="cpu", cache=None)
    random = load_encoder("random-tiny", device="cpu", cache=None)
    assert not torch.equal(encoder.model.blocks[0].attn.qkv.weight, random.model.blocks[0].attn.qkv.weight)
    [features] = encoder.extract([torch.randint(0, 255, (96, 96, 3), dtype=torch.uint8).numpy()])
    assert features.grid_hw == (12, 12) and torch.isfinite(features.patch_tokens).all()

    card = result.card_path.read_text()
    for text in ("command: `python -c", "seed: 0", "hardware: CPU", "timm", "steps: 14 x batch 8", "wall time",
                 "final losses", "small budget", f"--method {method}"):
        assert text in card, text
    rows = list(csv.DictReader(open(result.log_path)))
    assert len(rows) == 14 and float(rows[0]["loss"]) == pytest.approx(losses[0], rel=1e-4)


def test_unknown_method_is_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match="unknown training method 'simclr'"):
        train("simclr", out_dir=tmp_path, steps=1)


def test_supervised_run_is_repeatable_for_a_seed(tmp_path):
    first = train("supervised", out_dir=tmp_path / "a", steps=3, batch_size=4, seed=5, device="cpu", image_size=32)
    second = train("supervised", out_dir=tmp_path / "b", steps=3, batch_size=4, seed=5, device="cpu", image_size=32)
    assert [r["loss"] for r in first.history] == [r["loss"] for r in second.history]


def test_mae_and_cae_files_load_whole_with_their_decoders(tmp_path):
    from ssl_core.mim.cae import load_cae
    from ssl_core.mim.mae_checkpoints import load_mae

    mae_run = train("mae", out_dir=tmp_path, steps=2, batch_size=4, seed=0, device="cpu", image_size=48)
    mae = load_mae(mae_run.weights_path)
    assert mae.norm_pix_loss and mae.img_size == 48 and len(mae.decoder_blocks) == 2

    cae_run = train("cae", out_dir=tmp_path, steps=2, batch_size=4, seed=0, device="cpu", image_size=48)
    cae = load_cae(cae_run.weights_path)
    with safe_open(str(cae_run.weights_path), framework="pt") as f:
        keys = set(f.keys())
    assert {"cls_token", "pos_embed", "blocks.0.attn.qkv.weight", "mask_token"} <= keys
    assert any(k.startswith("regressor.blocks.") for k in keys) and any(k.startswith("decoder.pred") for k in keys)
    mask = torch.zeros(36, dtype=torch.bool)
    mask[[0, 7, 14, 35]] = True
    imgs = torch.randn(2, 3, 48, 48)
    predicted, target = cae.predict_masked_latents(imgs, mask)
    assert predicted.shape == target.shape == (2, 4, 192)
    # the target is the encoder's own view of the hidden patches alone: it does not depend on the visible ones
    other = imgs.clone()
    other[:, :, 24:40, 8:24] += 1.0  # patches (3, 1), (3, 2), (4, 1), (4, 2): all visible
    _, target_other = cae.predict_masked_latents(other, mask)
    assert torch.allclose(target, target_other, atol=1e-5)


def test_cae_refuses_a_file_without_its_metadata(tmp_path):
    from ssl_core.errors import CheckpointError
    from ssl_core.mim.cae import load_cae

    run = train("supervised", out_dir=tmp_path, steps=1, batch_size=2, seed=0, device="cpu", image_size=32)
    with pytest.raises(CheckpointError, match="not a PatchLens CAE file"):
        load_cae(run.weights_path)


def test_misplaced_tokens_carry_another_kept_tokens_position():
    from ssl_core.features.vit_tokens import misplace_tokens

    torch.manual_seed(0)
    N, L, D = 3, 36, 8
    content = torch.randn(N, L, D)
    positions = torch.randn(1, L, D)
    kept, swapped = misplace_tokens(content + positions, positions, keep_ratio=0.5, swap_ratio=0.25)
    assert kept.shape == (N, 18, D) and swapped.sum(1).tolist() == [4.0, 4.0, 4.0]
    for n in range(N):
        for k in range(18):
            residual = kept[n, k] - positions[0]  # [L, D]: which content and which position make this token
            content_match = (residual[:, None] - content[n][None]).abs().amax(-1) < 1e-5  # [L pos, L content]
            (pos, src), = content_match.nonzero().tolist()
            assert (pos != src) == bool(swapped[n, k])


def test_cli_train_records_the_command_that_repeats_it(tmp_path, capsys):
    from app.cli.main import main

    assert main(["train", "--method", "supervised", "--out", str(tmp_path), "--steps", "2", "--batch-size", "4",
                 "--image-size", "32", "--name", "tiny-sup", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "tiny-sup.safetensors" in out and (tmp_path / "tiny-sup.md").is_file()
    card = (tmp_path / "tiny-sup.md").read_text()
    assert (f"command: `patchlens train --method supervised --out {tmp_path} --steps 2 --batch-size 4 --seed 0 "
            f"--name tiny-sup --image-size 32 --device cpu`") in card
    settings = json.loads(card.split("```json")[1].split("```")[0])
    assert settings["steps"] == 2 and settings["batch_size"] == 4
    weights = (tmp_path / "tiny-sup.safetensors").read_bytes()
    assert (tmp_path / "tiny-sup.safetensors").stat().st_mode & 0o777 == 0o644  # as readable as its card
    assert not list(tmp_path.glob(".*partial"))
    again = ["train", "--method", "supervised", "--out", str(tmp_path), "--steps", "1", "--batch-size", "4",
             "--image-size", "32", "--name", "tiny-sup", "--device", "cpu"]
    assert main(again) == 2  # existing weights (e.g. a bundled model) are kept, before any step
    assert "tiny-sup.safetensors exists; training would replace it. Pass --overwrite" in capsys.readouterr().err
    assert (tmp_path / "tiny-sup.safetensors").read_bytes() == weights
    assert main(again + ["--overwrite"]) == 0
    assert (tmp_path / "tiny-sup.safetensors").read_bytes() != weights
    assert "--device cpu --overwrite`" in (tmp_path / "tiny-sup.md").read_text()


def test_a_time_budget_shortens_the_run_and_its_schedule(tmp_path, monkeypatch):
    import ssl_core.train.common as common
    from ssl_core.train.common import CALIBRATION_STEPS, TrainConfig, planned_steps

    # the overrun guard (its own test below) would cut a run whose steps slowed on a loaded machine mid-schedule;
    # here the plan alone must end the run
    monkeypatch.setattr(common, "BUDGET_TOLERANCE", 1000.0)

    config = TrainConfig(method="supervised", name="x", steps=1000, max_seconds=5.0)
    assert planned_steps(config, CALIBRATION_STEPS, 1.0, 0.1) == 50  # 4 s left at 0.1 s per step: 40 more steps
    assert planned_steps(config, CALIBRATION_STEPS, 3.0, 0.1) == 30  # a slow start leaves less, not a slower step
    assert planned_steps(config, CALIBRATION_STEPS, 0.001, 0.0001) == 1000  # never more than asked
    assert planned_steps(TrainConfig(method="supervised", name="x", steps=1000), CALIBRATION_STEPS, 99.0, 9.9) == 1000
    result = train("supervised", out_dir=tmp_path, steps=10_000, batch_size=4, seed=0, device="cpu", image_size=32,
                   log_every=1, max_seconds=1.5)
    assert CALIBRATION_STEPS < result.steps < 10_000
    assert len(result.history) == result.steps and result.history[-1]["step"] == result.steps
    from ssl_core.train.common import lr_at

    total = result.steps  # the schedule followed the shortened run: its last step is the cosine's end
    assert result.history[-1]["lr"] == pytest.approx(lr_at(total - 1, total, 1e-3, max(1, total // 10), 0.01))
    assert f"steps: {result.steps} x batch 4" in result.card_path.read_text()


def test_dino_teacher_momentum_follows_the_planned_run_and_the_card_records_the_recipe(tmp_path):
    from ssl_core.train.dino import DINORecipe

    recipe = DINORecipe()
    assert recipe.teacher_momentum_start(100) == 0.95 and recipe.teacher_momentum_start(2000) == pytest.approx(0.99)
    assert recipe.teacher_momentum_start(1_000_000) == 0.996
    assert DINORecipe(teacher_temp=0.07, teacher_temp_warmup=0.5).teacher_temp_at(25, 100) == pytest.approx(0.055)
    result = train("dino", out_dir=tmp_path, steps=2, batch_size=4, seed=0, device="cpu", image_size=32)
    settings = json.loads(result.card_path.read_text().split("```json")[1].split("```")[0])
    assert settings["dino"]["centering"] == recipe.centering == "sinkhorn"
    assert settings["dino"]["koleo_weight"] == recipe.koleo_weight
    assert settings["dino"]["momentum_start"] == 0.95


def test_sinkhorn_knopp_balances_the_prototypes_as_an_optimal_transport_plan():
    import torch.nn.functional as F

    from ssl_core.train.dino import sinkhorn_knopp

    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(12, 4, generator=generator) * 0.2
    logits[:, 0] += 0.5  # every image prefers prototype 0: a softmax would give it most of the batch
    temp = 0.1
    assert F.softmax(logits / temp, dim=-1).argmax(1).eq(0).all()
    q = sinkhorn_knopp(logits, temp)  # DINOv2's 3 iterations
    assert torch.allclose(q.sum(1), torch.ones(12))  # each image: a distribution over the prototypes
    assert q.sum(0).max() < 0.5 * 12  # prototype 0 no longer takes most of the batch
    converged = sinkhorn_knopp(logits, temp, iterations=500)
    assert torch.allclose(converged.sum(0), torch.full((4,), 3.0), atol=1e-4)  # B / K images per prototype
    # Sinkhorn's fixed point is diag(a) exp(logits / temp) diag(b): log q - logits / temp is a row plus a column term
    residual = converged.log() - logits / temp
    residual = residual - residual.mean(1, keepdim=True) - residual.mean(0, keepdim=True) + residual.mean()
    assert residual.abs().max() < 1e-3


def test_koleo_loss_is_minus_the_mean_log_distance_to_the_nearest_neighbour():
    from ssl_core.train.dino import koleo_loss

    x = torch.randn(10, 5, generator=torch.Generator().manual_seed(0)) * 3
    unit = x / x.norm(dim=1, keepdim=True)
    distances = torch.cdist(unit, unit) + torch.eye(10) * 10  # exclude each point itself
    assert koleo_loss(x).item() == pytest.approx(-distances.min(1).values.log().mean().item(), abs=1e-5)
    spread_out, bunched = torch.eye(4), torch.eye(4) + 5.0  # bunched: four nearly parallel vectors
    assert koleo_loss(spread_out) < koleo_loss(bunched)


def test_dino_sinkhorn_recipe_trains_and_rejects_an_unknown_centering(tmp_path):
    from ssl_core.errors import BadRequest
    from ssl_core.train.common import TrainConfig, run_training
    from ssl_core.train.dino import DINOLoss, DINOObjective, DINORecipe

    with pytest.raises(BadRequest, match="centering"):
        DINOLoss(8, centering="median")
    config = TrainConfig(method="dino", name="sk", out_dir=tmp_path, steps=2, batch_size=4, seed=0, image_size=32,
                         device="cpu", log_every=1)
    recipe = DINORecipe(centering="sinkhorn", koleo_weight=0.1)
    result = run_training(DINOObjective(config, recipe), config, torch.device("cpu"))
    assert {"koleo", "teacher_usage", "prototypes_used"} <= set(result.history[-1])


class _TimedObjective(Objective):
    """One weight pulled to 1; each step sleeps: ``first_s`` at step 0 (a GPU run's start-up: loader workers, CUDA
    kernels), then ``step_s``, and ``slow_s`` from step ``slow_from`` on (a run that slows after its plan is set)."""

    method = "supervised"

    def __init__(self, first_s: float, step_s: float, slow_from: int = 10**9, slow_s: float = 0.0):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.first_s, self.step_s, self.slow_from, self.slow_s = first_s, step_s, slow_from, slow_s

    def forward(self, batch, step: int, total: int) -> StepOutput:
        time.sleep(self.first_s if step == 0 else self.slow_s if step >= self.slow_from else self.step_s)
        return StepOutput((self.weight - 1).pow(2).sum())

    def export(self):
        return {"weight": self.weight.detach()}, {}


def _timed_run(tmp_path, objective: Objective, max_seconds: float):
    config = TrainConfig(method="supervised", name="timed", out_dir=tmp_path, steps=100_000, batch_size=2, image_size=16,
                         device="cpu", log_every=5, max_seconds=max_seconds)
    return run_training(objective, config, torch.device("cpu"))


def test_a_slow_start_does_not_shrink_the_plan(tmp_path):
    # 0.9 s of start-up, then 30 ms steps: the 2.1 s left hold ~65 steps (over 40 even with 20 ms of overhead a step
    # on a loaded machine). Timing the start-up with the first ten steps (~120 ms a step) planned ~25.
    result = _timed_run(tmp_path, _TimedObjective(first_s=0.9, step_s=0.03), max_seconds=3.0)
    assert result.steps > 40
    assert result.wall_s < 3.0 * 1.25


def test_a_run_that_slows_after_its_plan_stops_within_its_budget(tmp_path):
    # planned at 10 ms a step (~90 steps in 1 s); from step 15 each takes 0.2 s: without the stop, about 15 s
    result = _timed_run(tmp_path, _TimedObjective(first_s=0.01, step_s=0.01, slow_from=15, slow_s=0.2), max_seconds=1.0)
    assert result.steps < 30 and result.wall_s < 1.0 * BUDGET_TOLERANCE + 0.2 + 0.3
    assert result.history[-1]["step"] == result.steps  # the last step was logged as the last


def test_loader_workers_fit_the_shared_memory_and_leave_the_cpu_to_a_cpu_run(monkeypatch):
    """On a GPU one loader process per usable core but one, at most 16, no more than their ready batches fit in half
    of /dev/shm (a container's 64 MB: a worker that finds it full dies with a bus error); none on a CPU."""
    import ssl_core.train.common as common

    monkeypatch.setattr(common, "usable_cores", lambda: 16)
    config = TrainConfig("dino", "x", batch_size=256, image_size=96)  # 256 * 27,656 bytes: 7.1 MB a batch
    gpu = torch.device("cuda")
    assert loader_workers(config, torch.device("cpu"), shm_free=2 ** 40) == 0
    assert loader_workers(config, gpu, shm_free=2 ** 40) == 15
    assert loader_workers(config, gpu, shm_free=64 * 2 ** 20) == 2  # 32 MB / (2 batches of 7.1 MB each)
    assert loader_workers(config, gpu, shm_free=10 * 2 ** 20) == 0  # the main process makes the batches
    monkeypatch.setattr(common, "shared_memory_free", lambda: None)  # no /dev/shm to measure
    assert loader_workers(config, gpu) == 15


def _mae_reference_sincos(embed_dim: int, grid_size: int) -> np.ndarray:
    """MAE's util/pos_embed.py get_2d_sincos_pos_embed (numpy, cls_token=False), written out as a reference."""
    def embed_1d(dim: int, pos: np.ndarray) -> np.ndarray:
        omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    grid = np.meshgrid(np.arange(grid_size, dtype=np.float32), np.arange(grid_size, dtype=np.float32))  # w first
    grid = np.stack(grid, axis=0).reshape(2, 1, grid_size, grid_size)
    return np.concatenate([embed_1d(embed_dim // 2, grid[0]), embed_1d(embed_dim // 2, grid[1])], axis=1)


@pytest.mark.parametrize("no_embed_class", [False, True])
def test_sincos_positions_are_maes_table_written_after_the_embedded_prefix(no_embed_class):
    import timm

    from ssl_core.features.vit_tokens import set_sincos_positions

    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=64,
                            no_embed_class=no_embed_class)
    set_sincos_positions(vit)
    prefix = 0 if no_embed_class else 1
    assert vit.pos_embed.shape == (1, prefix + 16, 192)
    np.testing.assert_allclose(vit.pos_embed[0, prefix:].detach().numpy(), _mae_reference_sincos(192, 4), atol=1e-6)
    assert not vit.pos_embed[0, :prefix].any()
    assert vit.pos_embed.requires_grad  # the caller decides whether it trains


def test_dilemma_starts_student_and_teacher_from_sincos_positions_that_train():
    from ssl_core.train.dilemma import DILEMMAObjective

    config = TrainConfig(method="dilemma", name="x", image_size=48, device="cpu")
    torch.manual_seed(0)
    objective = DILEMMAObjective(config)
    reference = _mae_reference_sincos(objective.student.embed_dim, objective.student.patch_embed.grid_size[0])
    for vit in (objective.student, objective.teacher):
        np.testing.assert_allclose(vit.pos_embed[0, 1:].detach().numpy(), reference, atol=1e-6)
    assert objective.student.pos_embed.requires_grad and not objective.teacher.pos_embed.requires_grad
    assert objective.settings(10)["sincos_positions"] is True
    torch.manual_seed(0)
    learned = DILEMMAObjective(config, sincos_positions=False).student.pos_embed  # timm's init: std 0.02
    assert 0.01 < float(learned.detach().std()) < 0.03
