"""Each objective really learns on a CPU: its loss falls and its encoder beats an untrained one on a probe of the Lab.

Every run is tiny (a few dozen steps on small parts-world images, one thread, seeded) and is scored with the Lab's
own probes (`ssl_core.lab`) on held-out scenes at the training size, against the Lab's untrained baseline
(``random-tiny``) scored the same way. The probe that a run this short reliably moves is the Lab's linear object
probe, for every objective; the supervised model's k-NN accuracy is checked as well. Measured and left out (too
close to the untrained model at this size to assert with a margin): k-NN for the self-supervised objectives (DINO
beats the untrained baseline on k-NN at 48 px after 150 steps of 32 images: bench/bench_dino_recipe.py, not in 60
steps at 32 px) and the location probe for DILEMMA (0.58 AUC against 0.54 untrained, and DINO alone reaches the
same). The same runs with a learning rate of 1e-12 (weights that stay at their initialisation) score 0.28 on the
object probe, under the 0.30-0.32 the tests ask for (DILEMMA, at 48 px: 0.30, under its 0.35), so a run that stops
learning fails.
"""
from __future__ import annotations

from functools import lru_cache

import pytest

from ssl_core import load_encoder
from ssl_core.lab import LabConfig, encode_scenes, knn_probe, object_probe
from ssl_core.train import train

PROBE_CONFIG = LabConfig(n_train=200, n_test=100, seed=0)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def probe_scores(name: str, weights, image_size: int) -> dict[str, float]:
    """Object probe (balanced accuracy) and k-NN accuracy of the class token on held-out scenes."""
    encoder = load_encoder(name, weights=weights, pretrained=weights is not None, device="cpu",
                           image_size=image_size, cache=None)
    scenes = encode_scenes(encoder, PROBE_CONFIG)
    return {"object probe": object_probe(scenes, PROBE_CONFIG).balanced_accuracy,
            "k-NN": knn_probe(encoder, scenes, PROBE_CONFIG).class_token}


@lru_cache(maxsize=None)
def untrained_scores(image_size: int) -> dict[str, float]:
    return probe_scores("random-tiny", None, image_size)


def trained_scores(method: str, tmp_path, **run) -> tuple[list[float], dict[str, float]]:
    """(logged losses, probe scores) of a seeded run."""
    result = train(method, out_dir=tmp_path, seed=0, device="cpu", log_every=1, **run)
    losses = [row["loss"] for row in result.history]
    return losses, probe_scores("random-tiny", result.weights_path, run["image_size"])


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


# Supervised and masked-image modelling: 60 steps of 16 images at 32 px (about 5 s each on one thread).
QUICK = dict(steps=60, batch_size=16, image_size=32)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["supervised", "mae", "cae"])
def test_supervised_and_masked_image_models_learn_the_object_class(method, tmp_path):
    losses, scores = trained_scores(method, tmp_path, **QUICK)
    assert mean(losses[-15:]) < 0.9 * mean(losses[:15]), losses
    untrained = untrained_scores(QUICK["image_size"])
    # measured (seed 0): supervised 0.46, MAE 0.43, CAE 0.40 against 0.24 untrained (6 classes: chance 0.17)
    assert scores["object probe"] > untrained["object probe"] + 0.08, (scores, untrained)
    if method == "supervised":  # labels shape the embedding itself: its neighbours share the class (0.38 vs 0.27)
        assert scores["k-NN"] > untrained["k-NN"] + 0.05, (scores, untrained)


@pytest.mark.slow
@pytest.mark.parametrize("method, image_size", [("dino", 32), ("dilemma", 48)])
def test_self_distillation_learns_the_object_class(method, image_size, tmp_path):
    """DINO and DILEMMA with the short-run recipe (`ssl_core.train.dino.DINORecipe`: Sinkhorn-Knopp centring and
    KoLeo), 60 steps at 32 px (DINO) or 48 px (DILEMMA).

    With Sinkhorn-Knopp the teacher's targets stay spread over the prototypes, so the loss falls only some 9%
    (seed 0: DINO 5.64 -> 5.14 over the last 15 steps, DILEMMA 6.99 -> 6.27); with a learning rate of 1e-12 it does
    not fall (5.64 -> 5.68; DILEMMA 6.99 -> 7.06). The k-NN accuracy of the class token does not beat the untrained
    model in 60 steps at these sizes; the 150- and 200-step runs of docs/benchmarks.md ("DINO recipe", "DILEMMA:
    where the position embeddings start") are where it does. DILEMMA runs at 48 px because its position embeddings
    start from the 2D sin-cos table: on the 4x4 grid of 32 px that start alone scores 0.30 on the object probe (lr
    1e-12) and 60 steps do not move it (0.28), while at 48 px they do (0.41 against 0.30 with lr 1e-12).
    """
    losses, scores = trained_scores(method, tmp_path, **(QUICK | {"image_size": image_size}))
    assert mean(losses[-15:]) < 0.95 * losses[0], losses
    untrained = untrained_scores(image_size)
    # measured (seed 0): DINO 0.32 against 0.235 untrained and 0.275 for the run with lr 1e-12 (32 px); DILEMMA 0.41
    # against 0.29 untrained and 0.30 with lr 1e-12 (48 px)
    assert scores["object probe"] > untrained["object probe"] + 0.06, (scores, untrained)
