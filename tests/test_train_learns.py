"""Each objective really learns on a CPU: its loss falls and its encoder beats its own initialisation on a probe of
the Lab.

Every run is tiny (a few dozen to 150 steps on small parts-world images, one thread, seeded) and is scored with the
Lab's own probes (`ssl_core.lab`) on held-out scenes at the training size, against the same run's initial weights
(one step at a learning rate of 1e-12: `initial_scores`) scored the same way. The run's own start is the baseline,
not ``random-tiny``: untrained networks differ a lot on these probes (at 48 px ``random-tiny`` scores 0.29 on the
object probe and ``random-tiny-sincos``, the same weights with MAE's sin-cos position table, 0.41; a seeded DINO
start 0.30), so a fixed untrained model would let a run that learned nothing pass or one that learned fail. The
probe that a run this short reliably moves is the Lab's linear object probe, for every objective; the k-NN accuracy
of the class token is checked too for supervised training and DINO. Measured and left out: the location probe for
DILEMMA (too close to its start in 60 steps).
"""
from __future__ import annotations

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


def trained_scores(method: str, tmp_path, **run) -> tuple[list[float], dict[str, float]]:
    """(logged losses, probe scores) of a seeded run."""
    result = train(method, out_dir=tmp_path, seed=0, device="cpu", log_every=1, **run)
    losses = [row["loss"] for row in result.history]
    return losses, probe_scores("random-tiny", result.weights_path, run["image_size"])


def initial_scores(method: str, tmp_path, **run) -> dict[str, float]:
    """Probe scores of the weights a seeded run starts from (one step at lr 1e-12 leaves them, and the EMA teacher,
    where they were)."""
    return trained_scores(method, tmp_path / "initial", **(run | {"steps": 1, "lr": 1e-12}))[1]


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


# Supervised and masked-image modelling: 60 steps of 16 images at 32 px (about 5 s each on one thread).
QUICK = dict(steps=60, batch_size=16, image_size=32)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["supervised", "mae", "cae"])
def test_supervised_and_masked_image_models_learn_the_object_class(method, tmp_path):
    losses, scores = trained_scores(method, tmp_path, **QUICK)
    assert mean(losses[-15:]) < 0.9 * mean(losses[:15]), losses
    initial = initial_scores(method, tmp_path, **QUICK)
    # measured (seed 0, 6 classes: chance 0.17): supervised 0.46, MAE 0.43, CAE 0.40 against 0.28 at their starts
    assert scores["object probe"] > initial["object probe"] + 0.08, (scores, initial)
    if method == "supervised":  # labels shape the embedding itself: its neighbours share the class (0.38 vs 0.23)
        assert scores["k-NN"] > initial["k-NN"] + 0.05, (scores, initial)


@pytest.mark.slow
@pytest.mark.parametrize("method, run", [("dino", dict(steps=150, batch_size=16, image_size=32)),
                                         ("dilemma", dict(QUICK, image_size=48))])
def test_self_distillation_learns_the_object_class(method, run, tmp_path):
    """DINO and DILEMMA with the short-run recipe (`ssl_core.train.dino.DINORecipe`: Sinkhorn-Knopp centring, KoLeo,
    position embeddings from the 2D sin-cos table): DINO 150 steps of 16 at 32 px, DILEMMA 60 steps at 48 px.

    With Sinkhorn-Knopp the teacher's targets stay spread over the prototypes, so the loss falls only some 10%
    (seed 0: DINO 5.8 -> 5.2, DILEMMA 6.99 -> 6.27 over the last 15 steps). DINO needs the longer run: after 60 steps
    its object probe was 0.24 at 32 px and 0.32 at 48 px against 0.30 at its start.
    """
    losses, scores = trained_scores(method, tmp_path, **run)
    assert mean(losses[-15:]) < 0.95 * losses[0], losses
    initial = initial_scores(method, tmp_path, **run)
    # measured (seed 0): DINO object probe 0.39 and k-NN 0.26 against 0.30 and 0.19 at its start (32 px); DILEMMA
    # object probe 0.41 against 0.30 (48 px)
    assert scores["object probe"] > initial["object probe"] + 0.06, (scores, initial)
    if method == "dino":
        assert scores["k-NN"] > initial["k-NN"] + 0.03, (scores, initial)
