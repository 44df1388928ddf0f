"""Object- vs part-level linear probes (the part-aware SSL paper's comparison) and k-NN object accuracy (BagSSL's).

* `object_probe` / `part_probe`: a linear probe of the object class from the image embedding, against a linear probe
  of each patch's part label (`partsworld.patch_labels`, background included as a class) from its final token.
  Accuracy against the majority rate, balanced accuracy against 1 / classes.
* `knn_probe`: weighted k-NN object accuracy (cosine, DINO's exp(sim / T) votes) from the class token, from the mean
  of the patch tokens, and from a bag of crops: the scene tiled into crops of ``crop_fraction`` of its side
  (`ssl_core.analyses.bagssl.tile_boxes`), each crop embedded on its own at its own resolution (half-size crops, as
  DINO's local crops; not resized up, which would cost 4x the forward passes), and the crops' image embeddings
  averaged (`ssl_core.analyses.bagssl.bag_embeddings`).

Linear probes: `ssl_core.analyses.linear_probe.fit_linear_probe` (logistic regression on standardised features),
``max_iter`` large enough to converge at these sizes (each result says whether it did); patch-level training sets
are subsampled to ``max_probe_patches`` with the seed.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ssl_core.analyses.bagssl import bag_embeddings, tile_boxes
from ssl_core.analyses.linear_probe import fit_linear_probe, subsample
from ssl_core.features.encoder import Encoder
from ssl_core.lab.config import LabConfig
from ssl_core.lab.scenes import EncodedScenes, as_images, patch_rows, scene_part_labels
from ssl_core.progress import ProgressFn

if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline


# --------------------------------------------------------------------------------------------------- linear probes
@dataclass
class ProbeResult:
    """A linear probe scored on held-out samples."""

    name: str  # "object probe", "part probe", "location probe"
    task: str  # what is predicted from what
    accuracy: float
    balanced_accuracy: float  # mean recall over the classes present in the test set
    chance_accuracy: float  # majority-class rate of the test labels
    chance_balanced: float  # 1 / classes present in the test set
    classes: int
    n_train: int  # samples the probe was fitted on
    n_test: int
    n_train_images: int
    n_test_images: int
    seed: int
    converged: bool


def score_probe(probe: Pipeline, x: np.ndarray, y: np.ndarray, name: str, task: str, n_train: int,
                images: tuple[int, int], seed: int) -> ProbeResult:
    """A fitted probe scored on x [m, D], y [m]; ``images`` are the (train, test) scenes the samples come from."""
    from sklearn.metrics import balanced_accuracy_score

    predicted = probe.predict(np.asarray(x, np.float64))  # [m]
    with warnings.catch_warnings():  # a class the probe predicts may be absent from a small test set
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        balanced = float(balanced_accuracy_score(y, predicted))
    _, counts = np.unique(y, return_counts=True)
    max_iter = probe[-1].max_iter
    return ProbeResult(name, task, float((predicted == y).mean()), balanced,
                       float(counts.max() / counts.sum()), 1.0 / len(counts), len(counts), int(n_train), len(y),
                       images[0], images[1], seed, bool(np.all(probe[-1].n_iter_ < max_iter)))


def linear_probe(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, name: str,
                 task: str, config: LabConfig, images: tuple[int, int]) -> ProbeResult:
    """Fit on x_train [n, D], y_train [n]; score on x_test [m, D], y_test [m]."""
    probe = fit_linear_probe(x_train, y_train, config.seed, config.max_iter)
    return score_probe(probe, x_test, y_test, name, task, len(y_train), images, config.seed)


def object_probe(scenes: EncodedScenes, config: LabConfig) -> ProbeResult:
    """Object class of each scene from its image embedding (class token or pooled, pre-logits)."""
    x_train = torch.stack([f.image_embedding for f in scenes.train_features]).numpy()  # [n, D]
    x_test = torch.stack([f.image_embedding for f in scenes.test_features]).numpy()  # [m, D]
    y_train = np.array([s.object_class for s in scenes.train])
    y_test = np.array([s.object_class for s in scenes.test])
    return linear_probe(x_train, y_train, x_test, y_test, "object probe", "object class from the image embedding",
                        config, (len(y_train), len(y_test)))


def part_probe(scenes: EncodedScenes, config: LabConfig) -> ProbeResult:
    """Part label of each patch (background included) from its final token."""
    train, test = scenes.train[:config.patch_train_scenes], scenes.test[:config.patch_test_scenes]
    x_train = patch_rows(scenes.train_features[:len(train)])  # [n * h * w, D]
    x_test = patch_rows(scenes.test_features[:len(test)])
    y_train = scene_part_labels(train, scenes.patch_size).reshape(-1)
    y_test = scene_part_labels(test, scenes.patch_size).reshape(-1)
    keep = subsample(len(y_train), config.max_probe_patches, config.seed)
    return linear_probe(x_train[keep], y_train[keep], x_test, y_test, "part probe",
                        "part label of each patch (background included) from its token", config,
                        (len(train), len(test)))


# --------------------------------------------------------------------------------------------------- k-NN
def knn_accuracy(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                 k: int = 20, temperature: float = 0.07) -> float:
    """Weighted k-NN accuracy (as DINO's evaluation): cosine neighbours, votes exp(similarity / temperature).

    train_x [n, D], train_y [n] int64, test_x [m, D], test_y [m] -> accuracy in [0, 1].
    """
    similarity = F.normalize(test_x.float(), dim=-1) @ F.normalize(train_x.float(), dim=-1).T  # [m, n]
    top, index = similarity.topk(min(k, train_x.shape[0]), dim=1)  # [m, k]
    votes = torch.zeros(test_x.shape[0], int(train_y.max()) + 1)  # [m, classes]
    votes.scatter_add_(1, train_y[index], (top / temperature).exp())
    return float((votes.argmax(1) == test_y).float().mean())


def crop_side(side: int, patch_size: int, fraction: float) -> int:
    """A crop side of ``fraction`` of the scene side, in whole patches (at least one)."""
    return max(patch_size, int(side * fraction) // patch_size * patch_size)


def bag_of_crops_embeddings(encoder: Encoder, images: Sequence[Image.Image], crop_fraction: float = 0.5,
                            batch_size: int = 32, progress: ProgressFn | None = None) -> torch.Tensor:
    """Per image (all of one size), the mean image embedding of its tiles of ``crop_fraction`` of its side, each
    crop embedded on its own at its own resolution (`bag_embeddings`). Returns [n, D]."""
    width, height = images[0].size
    crop = crop_side(min(width, height), encoder.patch_size, crop_fraction)
    return bag_embeddings(encoder, images, crop, resize=False, batch_size=batch_size, progress=progress)


@dataclass
class KNNResult:
    """k-NN object accuracy from three summaries of a scene (BagSSL's comparison)."""

    class_token: float | None  # None for models without a class token
    patch_mean: float
    bag_of_crops: float
    chance_accuracy: float  # majority-class rate of the test scenes
    k: int
    temperature: float
    crop_size: int  # pixels of the scene
    crops_per_image: int
    n_train: int
    n_test: int
    seed: int


def knn_probe(encoder: Encoder, scenes: EncodedScenes, config: LabConfig, progress: ProgressFn | None = None,
              ) -> KNNResult:
    """k-NN object accuracy from the class token, the mean patch token and a bag of crops (see the module docstring)."""
    y_train = torch.tensor([s.object_class for s in scenes.train])  # [n]
    y_test = torch.tensor([s.object_class for s in scenes.test])  # [m]

    def accuracy(train_x: torch.Tensor, test_x: torch.Tensor) -> float:  # [n, D], [m, D]
        return knn_accuracy(train_x, y_train, test_x, y_test, config.knn_k, config.knn_temperature)

    class_token = None
    if encoder.has_class_token:
        class_token = accuracy(torch.stack([f.cls_token for f in scenes.train_features]),
                               torch.stack([f.cls_token for f in scenes.test_features]))
    patch_mean = accuracy(torch.stack([f.patch_tokens.mean((0, 1)) for f in scenes.train_features]),
                          torch.stack([f.patch_tokens.mean((0, 1)) for f in scenes.test_features]))
    bags = bag_of_crops_embeddings(encoder, as_images(scenes.train + scenes.test), config.crop_fraction,
                                   config.batch_size, progress)  # [n + m, D]
    crop = crop_side(scenes.size, encoder.patch_size, config.crop_fraction)
    _, counts = torch.unique(y_test, return_counts=True)
    return KNNResult(class_token, patch_mean, accuracy(bags[:len(y_train)], bags[len(y_train):]),
                     float(counts.max() / counts.sum()), config.knn_k, config.knn_temperature, crop,
                     len(tile_boxes(scenes.size, scenes.size, crop)), len(y_train), len(y_test), config.seed)
