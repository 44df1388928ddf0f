"""The Lab (ssl_core.lab, app.cli.lab, app.views.lab): probes, their chance levels, and the recorded numbers."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from ssl_core import load_encoder
from ssl_core.data import partsworld
from ssl_core.features.vit_tokens import forward_with_positions, swap_positions
from ssl_core.lab import (
    LabConfig,
    cka_probe,
    encode_scenes,
    heldout_seeds,
    knn_accuracy,
    mim_kind,
    mim_probe,
    part_map_agreement,
    part_probe,
    run_lab,
    scene_part_labels,
)

ROOT = Path(__file__).resolve().parents[1]
SMALL = LabConfig(n_train=60, n_test=40, patch_train_images=30, patch_test_images=20, part_map_images=12,
                  cka_images=8, mim_images=8, max_probe_patches=3000)


@pytest.fixture(scope="module")
def random_report(tiny_encoder):
    return run_lab({"random-tiny": tiny_encoder}, SMALL)


def test_heldout_scenes_never_meet_a_training_stream_and_test_scenes_do_not_depend_on_n_train():
    seeds = heldout_seeds(SMALL, "train") + heldout_seeds(SMALL, "test")
    assert len(set(seeds)) == SMALL.n_train + SMALL.n_test
    assert min(seeds) >= partsworld.HELDOUT_OFFSET
    # a training stream of run seed s < 2**29 draws seeds below 2**29 * 2**32 = 2**61 < HELDOUT_OFFSET
    assert partsworld.HELDOUT_OFFSET > (1 << 29) * partsworld.TRAIN_STREAM_STRIDE
    assert heldout_seeds(replace(SMALL, n_train=5), "test") == heldout_seeds(SMALL, "test")
    assert heldout_seeds(replace(SMALL, seed=1), "train")[0] != heldout_seeds(SMALL, "train")[0]


def test_swap_free_forward_is_forward_features_and_a_swap_is_a_cycle_of_wrong_positions(tiny_encoder):
    vit = tiny_encoder.model
    imgs = torch.randn(2, 3, 96, 96)
    identity = torch.arange(144).expand(2, -1)
    with torch.inference_mode():
        assert torch.equal(forward_with_positions(vit, imgs, identity), vit.forward_features(imgs))
        ids, swapped = swap_positions(144, 0.15, torch.Generator().manual_seed(0))
        assert int(swapped.sum()) == round(0.15 * 144)
        assert torch.equal(ids.sort().values, torch.arange(144))  # a permutation of the positions
        positions = torch.arange(144)
        assert bool((ids[swapped] != positions[swapped]).all()) and torch.equal(ids[~swapped], positions[~swapped])
        moved = forward_with_positions(vit, imgs, torch.stack([ids, ids]))
        assert not torch.allclose(moved, vit.forward_features(imgs), atol=1e-4)
    with pytest.raises(ValueError, match="position_ids has shape"):
        forward_with_positions(vit, imgs, identity[:, :10])


def test_part_map_ari_is_one_on_ground_truth_features_and_about_zero_when_shuffled():
    scenes = [partsworld.sample(seed, 96) for seed in heldout_seeds(SMALL, "test", 12)]
    truth = list(scene_part_labels(scenes, 8))  # [12, 12] each
    one_hot = [torch.nn.functional.one_hot(torch.from_numpy(t), len(partsworld.PART_NAMES)).float() for t in truth]
    result = part_map_agreement(one_hot, truth, seed=0)
    assert result.k == len(np.unique(np.stack(truth)))
    assert result.ari_per_image == pytest.approx(1.0) and result.ari_pooled == pytest.approx(1.0)
    assert abs(result.chance_per_image) < 0.05 and abs(result.chance_pooled) < 0.05
    assert result.images == 12 and result.patches == 12 * 144 and result.seed == 0


def test_knn_accuracy_finds_clustered_classes_and_falls_to_chance_on_shuffled_labels():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 16)) * 3
    labels = rng.integers(0, 4, 400)
    x = torch.from_numpy(centres[labels] + rng.normal(size=(400, 16))).float()
    y = torch.from_numpy(labels)
    assert knn_accuracy(x[:300], y[:300], x[300:], y[300:], k=20) > 0.95
    shuffled = torch.from_numpy(rng.permutation(labels[:300]))
    assert knn_accuracy(x[:300], shuffled, x[300:], y[300:], k=20) < 0.45


def test_random_weights_beat_chance_on_parts_and_objects_but_not_on_swapped_positions(random_report):
    [lab] = random_report.encoders
    assert not lab.trained
    # parts have their own typical colours, so even random features separate them
    assert lab.part_probe.balanced_accuracy > 3 * lab.part_probe.chance_balanced
    assert lab.part_probe.n_train == 3000 and lab.part_probe.n_test_images == 20 and lab.part_probe.seed == 0
    assert lab.object_probe.balanced_accuracy > lab.object_probe.chance_balanced + 0.1
    assert lab.object_probe.n_train == 60 and lab.object_probe.n_test == 40
    assert lab.part_map.ari_per_image > lab.part_map.chance_per_image + 0.3
    # a random ViT sees position embeddings but cannot tell a wrong one from a right one
    location = lab.location
    assert location.probe is not None and abs(location.auc - 0.5) < 0.06
    assert abs(location.probe.balanced_accuracy - 0.5) < 0.05
    assert location.map_probability.shape == location.map_swapped.shape == (12, 12)
    assert 0.5 < location.visible_share < 1 and abs(location.auc_visible - 0.5) < 0.1  # most swaps show, not all
    assert lab.knn.n_train == 60 and lab.knn.crops_per_image == 4 and lab.knn.crop_size == 48
    assert lab.mim is None
    markdown = random_report.to_markdown()
    assert "random-tiny (untrained)" in markdown and "| part probe: balanced accuracy |" in markdown
    numbers = json.loads(json.dumps(random_report.to_dict()))  # JSON-able, pictures left out
    recorded = numbers["encoders"][0]["part_probe"]["balanced_accuracy"]
    assert recorded == pytest.approx(lab.part_probe.balanced_accuracy, abs=1e-4)
    assert "map_probability" not in numbers["encoders"][0]["location"]


def test_cka_of_an_encoder_with_a_separate_copy_of_itself_has_ones_on_the_diagonal(tiny_encoder):
    twin = load_encoder("random-tiny", device="cpu", cache=None)
    comparison = cka_probe(tiny_encoder, twin, SMALL)
    np.testing.assert_allclose(comparison.diagonal, 1.0, atol=1e-6)
    assert comparison.result.images == SMALL.cka_images and comparison.seed == SMALL.seed


def test_no_measure_uses_more_scenes_than_its_split_holds(tiny_encoder):
    config = replace(SMALL, n_train=6, n_test=4, patch_train_images=30, part_map_images=12, cka_images=48,
                     mim_images=64, attention_images=40, batch_size=8)
    assert heldout_seeds(config, "test", 64) == heldout_seeds(config, "test") and len(heldout_seeds(config, "test")) == 4
    seen = []
    report = run_lab({"random-tiny": tiny_encoder}, config, progress=lambda done, total: seen.append((done, total)),
                     cka_pairs=[("random-tiny", "random-tiny")])
    [lab] = report.encoders
    assert (lab.part_probe.n_train_images, lab.part_probe.n_test_images) == (6, 4) and lab.part_map.images == 4
    assert lab.location.probe.n_train_images == 6 and report.cka[0].result.images == 4 and lab.attention.images == 4
    # progress counts what is passed through a model: scenes and crop bags, swapped scenes, attention scenes, CKA
    # scenes twice
    assert seen[-1] == (42, 42) == (2 * (6 + 4) + (6 + 4) + 4 + 2 * 4,) * 2 and all(d <= t for d, t in seen)
    markdown = report.to_markdown()
    assert ("part maps on the first 4 test scenes, CKA on the first 4, MIM on the first 4 and attention on the first "
            "4.") in markdown
    assert "residual stream after each block, 4 images" in markdown and "| part map ARI (per scene) | " in markdown
    assert "4 scenes, k=" in markdown


def _save_cae(path: Path) -> Path:
    from safetensors.torch import save_file

    from ssl_core.mim.cae import CAEConfig, CAEModel, cae_metadata, cae_state_dict

    cae = CAEModel(CAEConfig())
    save_file({k: v.contiguous() for k, v in cae_state_dict(cae).items()}, str(path), metadata=cae_metadata(cae))
    return path


def test_mim_probe_reads_mae_and_cae_files_and_reports_their_losses(tmp_path):
    from ssl_core.mim.mae import build_mae, save_mae

    mae_file = save_mae(build_mae(decoder_depth=1).eval(), tmp_path / "mae.safetensors")
    config = replace(SMALL, mim_images=6, batch_size=4)
    mae_encoder = load_encoder("patchlens_vit_tiny_p8", weights=mae_file, device="cpu", cache=None)
    assert mim_kind(mae_encoder) == "MAE"
    mae = mim_probe(mae_encoder, config)
    assert mae.kind == "MAE" and mae.mask_ratio == 0.75 and mae.hidden_patches == 108 and mae.images == 6
    assert mae.reconstruction_mse > 0 and mae.zero_prediction_mse > 0 and mae.alignment_cosine is None
    cae_encoder = load_encoder("patchlens_vit_tiny_p8", weights=_save_cae(tmp_path / "cae.safetensors"), device="cpu",
                               cache=None)
    assert mim_kind(cae_encoder) == "CAE" and mim_kind(load_encoder("random-tiny", device="cpu", cache=None)) is None
    cae = mim_probe(cae_encoder, config)
    assert cae.kind == "CAE" and cae.mask_ratio == 0.5 and cae.hidden_patches == 72
    assert -1 <= cae.mismatched_cosine <= 1 and -1 <= cae.alignment_cosine <= 1 and cae.alignment_mse > 0
    assert mim_probe(load_encoder("random-tiny", device="cpu", cache=None), config) is None
    assert mim_probe(mae_encoder, replace(config, n_test=3)).images == 3  # never more than n_test


def test_trained_mae_reconstructs_below_the_zero_baseline():
    if not (ROOT / "assets/models/patchlens-mae.safetensors").is_file():
        pytest.skip("patchlens-mae is not trained yet")
    result = mim_probe(load_encoder("patchlens-mae", device="cpu", cache=None), replace(SMALL, mim_images=16))
    assert result.reconstruction_mse < result.zero_prediction_mse


def test_bundled_model_gives_the_part_probe_recorded_in_docs_lab_json():
    record_path = ROOT / "docs/lab.json"
    if not (ROOT / "assets/models/patchlens-sup.safetensors").is_file() or not record_path.is_file():
        pytest.skip("patchlens-sup or docs/lab.json is missing")
    record = json.loads(record_path.read_text())
    entry = next((e for e in record["encoders"] if e["name"] == "patchlens-sup"), None)
    encoder = load_encoder("patchlens-sup", device="cpu", cache=None)
    if entry is None or entry["weights"] != encoder.key:
        pytest.skip("docs/lab.json was not made with these patchlens-sup weights: re-run `patchlens lab`")
    recorded = LabConfig(**record["config"])
    # the part probe reads only the first patch_train_images / patch_test_images scenes, whose seeds do not depend
    # on n_train / n_test: encode just those
    config = replace(recorded, n_train=recorded.patch_train_images, n_test=recorded.patch_test_images)
    result = part_probe(encode_scenes(encoder, config), config)
    assert result.n_train == entry["part_probe"]["n_train"] and result.n_test == entry["part_probe"]["n_test"]
    assert result.accuracy == pytest.approx(entry["part_probe"]["accuracy"], abs=0.01)
    assert result.balanced_accuracy == pytest.approx(entry["part_probe"]["balanced_accuracy"], abs=0.01)
    assert result.balanced_accuracy > 3 * result.chance_balanced


def test_lab_command_writes_markdown_and_json_with_its_command(tmp_path, capsys):
    from app.cli.main import main

    out = tmp_path / "lab.md"
    assert main(["lab", "--models", "random-tiny", "--n-train", "12", "--n-test", "8", "--seed", "3",
                 "--out", str(out)]) == 0
    text = out.read_text()
    assert f"Command: `patchlens lab --models random-tiny --n-train 12 --n-test 8 --seed 3 --out {out}`" in text
    assert "Machine: CPU" in text or "Machine: GPU" in text
    assert "## What holds here" in text and "**Random weights** (random-tiny)" in text
    numbers = json.loads(out.with_suffix(".json").read_text())
    assert numbers["config"]["seed"] == 3 and numbers["encoders"][0]["object_probe"]["n_test"] == 8
    assert numbers["encoders"][0]["weights"] == "patchlens_vit_tiny_p8@random-seed0"


def test_lab_handlers_return_tables_and_pictures(random_report, tiny_encoder):
    from app.views.lab import PROBES, cka_view, probe_view, report_view

    view = report_view(random_report, [tiny_encoder])
    assert "Untrained" in view.markdown and "What holds here" in view.markdown
    assert view.pictures["location"].ndim == 3 and view.pictures["part_map"].ndim == 3 and "cka" not in view.figures
    single = probe_view(tiny_encoder, PROBES[2], SMALL)
    assert "location probe: ROC AUC" in single.markdown and "location" in single.pictures
    assert "part_map" not in single.pictures
    assert "seed 0" in single.markdown
    with pytest.raises(ValueError, match="unknown probe"):
        probe_view(tiny_encoder, "nope", SMALL)
    cka = cka_view(tiny_encoder, tiny_encoder, replace(SMALL, cka_images=4))
    assert cka.pictures["cka_heatmap"].ndim == 3 and cka.numbers["diagonal"][0] == pytest.approx(1.0)


def test_attention_range_probe_in_the_report_and_as_its_own_measure(random_report, tiny_encoder):
    from app.views.lab import PROBES, probes_view
    from ssl_core.analyses.attention_range import attention_range
    from ssl_core.lab.attention import attention_probe
    from ssl_core.lab.scenes import as_images, heldout_scenes

    [lab] = random_report.encoders
    features = tiny_encoder.extract(as_images(heldout_scenes(SMALL, "test", 96, SMALL.attention_scenes)), attention=True)
    np.testing.assert_allclose(lab.attention.nmi, attention_range(features).nmi.mean(1), rtol=1e-6)
    assert lab.attention.images == SMALL.attention_scenes == 32 and len(lab.attention.relative_distance) == 6
    assert "### Attention range per block" in random_report.to_markdown()
    assert random_report.to_dict()["encoders"][0]["attention"]["heads"] == 3
    seen = []
    ten = attention_probe(tiny_encoder, replace(SMALL, attention_images=10, seed=5), lambda *step: seen.append(step))
    assert seen == [(8, 10), (10, 10)] and (ten.images, ten.image_size, ten.seed, ten.heads) == (10, 96, 5, 3)
    view = probes_view({"random-tiny": tiny_encoder}, PROBES[5], replace(SMALL, attention_images=4))
    assert "### Attention range per block" in view.markdown and "query-key NMI, per block" in view.details
    assert view.numbers["random-tiny"]["AttentionResult"]["images"] == 4


def test_visible_swaps_match_a_numpy_reference():
    """A swap is visible when the token's own patch and the patch of the position it was given differ by more than
    VISIBLE_DIFFERENCE (mean absolute pixel difference); checked patch by patch in numpy on a half-flat image."""
    from ssl_core.analyses.positions import VISIBLE_DIFFERENCE, visible_swaps
    from ssl_core.features.vit_tokens import swap_positions

    rng = np.random.default_rng(0)
    pixels = np.full((2, 3, 32, 48), 0.5, np.float32)  # 4 x 6 patches of 8 px; the left half flat
    pixels[:, :, :, 24:] = rng.random((2, 3, 32, 24))
    pixels[1, :, :8, :8] += VISIBLE_DIFFERENCE / 2  # one patch barely off the flat grey: not visible
    generator = torch.Generator().manual_seed(0)
    position_ids = torch.stack([swap_positions(24, 0.5, generator)[0] for _ in range(2)])  # [2, 24]
    visible = visible_swaps(torch.from_numpy(pixels), position_ids, 8).numpy()
    patches = pixels.reshape(2, 3, 4, 8, 6, 8).transpose(0, 2, 4, 1, 3, 5).reshape(2, 24, -1)  # row-major patches
    for b in range(2):
        for i in range(24):
            j = int(position_ids[b, i])
            assert visible[b, i] == (np.abs(patches[b, i] - patches[b, j]).mean() > VISIBLE_DIFFERENCE)
    assert visible.any() and not visible.all()
