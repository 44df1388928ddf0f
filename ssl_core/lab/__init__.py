"""The Lab: the papers' findings, measured on any encoder over a held-out parts-world set.

One function and one result dataclass per analysis; every result carries its sample sizes and seed.

* `object_probe` / `part_probe` (the part-aware SSL paper's comparison): a linear probe of the object class from
  the image embedding, against a linear probe of each patch's part label (`partsworld.patch_labels`, background
  included as a class) from its final token. Accuracy against the majority rate, balanced accuracy against
  1 / classes.
* `knn_probe` (BagSSL's claim): weighted k-NN object accuracy (cosine, DINO's exp(sim / T) votes) from the class
  token, from the mean of the patch tokens, and from a bag of crops: the scene tiled into crops of
  ``crop_fraction`` of its side (`ssl_core.analyses.bagssl.tile_boxes`), each crop embedded on its own at its own
  resolution (half-size crops, as DINO's local crops; not resized up, which would cost 4x the forward passes),
  and the crops' image embeddings averaged.
* `location_probe` (DILEMMA's task): a random ``swap_ratio`` of each scene's patch tokens trade position
  embeddings in a cycle before the blocks (`forward_with_positions`: timm's patch embedding, the permuted
  position table, then the blocks; with no swap it is ``model.forward_features``), and a linear probe on the
  final patch tokens says which tokens were swapped. Accuracy against the majority rate, balanced accuracy and
  ROC AUC against 0.5, and the probe's per-patch probability map on one scene. Needs a timm
  ``VisionTransformer`` with absolute position embeddings; others are reported as skipped.
* `part_map_agreement`: one spherical k-means over the patch tokens of several scenes (`ssl_core.analyses.parts.part_maps`,
  k = the number of ground-truth part labels present) against the ground-truth patch part labels: adjusted Rand
  index per scene (mean) and over all patches pooled (which also asks a cluster to mean the same part in every
  scene), with a chance baseline (each scene's cluster labels shuffled over its patches); and the same index against
  the patches' grid position (4 x 4 blocks of the grid), which tells clusters that follow parts from clusters that
  follow location (tokens that carry their position strongly, as MIM models' often do), and the ARI against parts
  of a k-means after each grid position's mean token is removed (`ssl_core.analyses.parts.remove_position_mean`).
* `cka_probe` (the CKA paper's figure): `ssl_core.analyses.cka.compare_encoders` between two encoders, layer by layer.
* `mim_probe` (MAE / CAE weights files only): reconstruction error on held-out masked scenes (the model's own
  loss, over hidden patches) against predicting zero for every target value, and for a CAE the cosine between
  the regressor's predicted latents and the encoder's own latents of the hidden patches
  (`CAEModel.predict_masked_latents`), against the same cosine with the targets of other scenes.

Held-out set: scenes ``HELDOUT_OFFSET + seed * 2**32 + i`` (train) and ``HELDOUT_OFFSET + seed * 2**32 + 2**31 + i``
(test), never drawn by a training stream (`ssl_core.data.partsworld`). Patch-level probes use the first
``patch_train_images`` / ``patch_test_images`` of them, the part maps, CKA and MIM measures the first test scenes.

Image policy: scenes are drawn at the exact square size the encoder's resize policy gives for its input size
(`scene_size`: the short side ``spec.image_size`` rounded to whole patches; 96 px for the bundled models, 224 for
the hub ViTs), so no image is resampled and the part labels line up with the patch grid. For a CKA between two
encoders the scenes are drawn at the larger of their sizes and the other encoder resizes them as it resizes any
image; an MAE / CAE gets them at its own native size.

Linear probes: scikit-learn ``LogisticRegression`` (lbfgs, C = 1) on standardised features, ``max_iter`` large
enough to converge at these sizes (each result says whether it did); patch-level training sets are subsampled
to ``max_probe_patches`` with the seed. Fits run with one BLAS thread: on a busy 2-core machine OpenBLAS's
waiting threads made them ten times slower.
"""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ssl_core.analyses.bagssl import tile_boxes
from ssl_core.analyses.cka import CKAResult, compare_encoders
from ssl_core.analyses.parts import agreement_with_truth, part_maps, remove_position_mean
from ssl_core.data import partsworld
from ssl_core.errors import BadRequest
from ssl_core.features.encoder import Encoder, PatchFeatures
from ssl_core.features.vit_tokens import forward_with_positions, swap_positions
from ssl_core.mim.masks import random_mask
from ssl_core.progress import ProgressFn
from ssl_core.render.tables import markdown_table

SPLIT_STRIDE = 1 << 32  # held-out scenes of Lab seed s start at HELDOUT_OFFSET + s * SPLIT_STRIDE
TEST_OFFSET = 1 << 31  # test scenes follow train scenes at this offset, so they do not depend on n_train
MAE_MASK_RATIO = 0.75  # MAE's own ratio, for MAE files (a CAE file records its ratio)
PICTURE = {"picture": True}  # field metadata: arrays left out of the JSON numbers


@dataclass
class LabConfig:
    """Sizes and seed of a Lab run (see the module docstring)."""

    n_train: int = 300  # held-out scenes the object probe and k-NN are fitted on
    n_test: int = 150  # held-out scenes they are scored on
    seed: int = 0  # picks the held-out scenes, patch subsamples, swaps, masks and k-means starts
    batch_size: int = 32
    patch_train_images: int = 80  # scenes whose patches train the part and location probes (first of train)
    patch_test_images: int = 40  # scenes whose patches score them (first of test)
    max_probe_patches: int = 6000  # patch-level training sets are subsampled to this many
    max_iter: int = 2000  # LogisticRegression iterations
    knn_k: int = 20
    knn_temperature: float = 0.07
    crop_fraction: float = 0.5  # bag-of-crops tile side as a fraction of the scene side
    swap_ratio: float = 0.15  # patch tokens given another token's position embedding
    part_map_images: int = 32
    cka_images: int = 48
    mim_images: int = 64
    mask_ratio: float | None = None  # MIM mask ratio (None: 0.75 for MAE, the file's own for CAE)

    def __post_init__(self) -> None:
        for name in ("n_train", "n_test", "batch_size", "patch_train_images", "patch_test_images", "max_probe_patches",
                     "max_iter", "knn_k", "part_map_images", "cka_images", "mim_images"):
            if int(getattr(self, name)) < 1:
                raise BadRequest(f"LabConfig.{name} must be at least 1, got {getattr(self, name)}")
        if self.n_train < 2 or self.n_test < 2:
            raise BadRequest(f"LabConfig needs n_train and n_test of at least 2, got {self.n_train} and {self.n_test}")
        if not 0 <= self.seed < 1 << 29:
            raise BadRequest(f"LabConfig.seed must be in [0, 2**29), got {self.seed}")
        if not 0 < self.crop_fraction <= 1:
            raise BadRequest(f"LabConfig.crop_fraction must be in (0, 1], got {self.crop_fraction}")
        if not 0 < self.swap_ratio < 1:
            raise BadRequest(f"LabConfig.swap_ratio must be in (0, 1), got {self.swap_ratio}")
        if self.mask_ratio is not None and not 0 < self.mask_ratio < 1:
            raise BadRequest(f"LabConfig.mask_ratio must be in (0, 1), got {self.mask_ratio}")

    def describe(self) -> str:
        return (f"seed {self.seed}: {self.n_train} train / {self.n_test} test held-out scenes; patch probes on "
                f"{min(self.patch_train_images, self.n_train)} / {min(self.patch_test_images, self.n_test)} of them; "
                f"k-NN k={self.knn_k}; swap ratio {self.swap_ratio}; part maps on "
                f"{min(self.part_map_images, self.n_test)} test scenes, CKA on the first {self.cka_images} and MIM on "
                f"the first {self.mim_images} test scenes")


# --------------------------------------------------------------------------------------------------- scenes
def heldout_seeds(config: LabConfig, split: str, count: int | None = None) -> list[int]:
    """Sample seeds of the held-out ``"train"`` or ``"test"`` scenes (the first ``count``; default all)."""
    if split not in ("train", "test"):
        raise BadRequest(f"split must be 'train' or 'test', not {split!r}")
    first = partsworld.HELDOUT_OFFSET + config.seed * SPLIT_STRIDE + (TEST_OFFSET if split == "test" else 0)
    n = config.n_train if split == "train" else config.n_test
    return [first + i for i in range(n if count is None else count)]


def heldout_scenes(config: LabConfig, split: str, size: int, count: int | None = None) -> list[partsworld.PartsSample]:
    return [partsworld.sample(seed, size) for seed in heldout_seeds(config, split, count)]


def scene_size(encoder: Encoder) -> int:
    """The side scenes are drawn at for an encoder: its input size, rounded to whole patches (no resampling)."""
    side = int(encoder.spec.image_size)
    return encoder.policy.target_size(side, side)[0]


def as_images(scenes: Sequence[partsworld.PartsSample]) -> list[Image.Image]:
    return [Image.fromarray(s.image) for s in scenes]


@dataclass
class EncodedScenes:
    """One encoder's final-layer features of the held-out scenes: the shared input of most analyses."""

    encoder_name: str
    size: int  # scene side in pixels
    patch_size: int
    train: list[partsworld.PartsSample]
    test: list[partsworld.PartsSample]
    train_features: list[PatchFeatures]
    test_features: list[PatchFeatures]
    seed: int


def encode_scenes(encoder: Encoder, config: LabConfig, progress: ProgressFn | None = None) -> EncodedScenes:
    """Draw the held-out scenes at the encoder's size and extract their final tokens."""
    size = scene_size(encoder)
    train, test = heldout_scenes(config, "train", size), heldout_scenes(config, "test", size)
    total = len(train) + len(test)
    features = encoder.extract(as_images(train + test), batch_size=config.batch_size,
                               progress=None if progress is None else (lambda done, _n: progress(done, total)))
    return EncodedScenes(encoder.name, size, encoder.patch_size, train, test, features[:len(train)],
                         features[len(train):], config.seed)


def scene_part_labels(scenes: Sequence[partsworld.PartsSample], patch_size: int) -> np.ndarray:
    """Ground-truth part label of each patch: [n, h, w] int64 (`partsworld.patch_labels`; 0 = background)."""
    return partsworld.patch_labels(np.stack([s.part_map for s in scenes]), patch_size)


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


def fit_linear_probe(x: np.ndarray, y: np.ndarray, seed: int, max_iter: int):
    """A standardise + logistic-regression pipeline fitted on x [n, D], y [n] (see the module docstring)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if len(np.unique(y)) < 2:
        raise BadRequest("a linear probe needs at least two classes in its training labels")
    from threadpoolctl import threadpool_limits

    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter, random_state=seed))
    with threadpool_limits(limits=1, user_api="blas"):  # see the module docstring
        return probe.fit(np.asarray(x, np.float64), np.asarray(y))


def score_probe(probe, x: np.ndarray, y: np.ndarray, name: str, task: str, n_train: int, images: tuple[int, int],
                seed: int) -> ProbeResult:
    from sklearn.metrics import balanced_accuracy_score

    predicted = probe.predict(np.asarray(x, np.float64))
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
    probe = fit_linear_probe(x_train, y_train, config.seed, config.max_iter)
    return score_probe(probe, x_test, y_test, name, task, len(y_train), images, config.seed)


def subsample(n: int, limit: int, seed: int) -> np.ndarray:
    """Sorted indices of at most ``limit`` of n items, drawn with the seed (all of them when n <= limit)."""
    if n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))


def object_probe(scenes: EncodedScenes, config: LabConfig) -> ProbeResult:
    """Object class of each scene from its image embedding (class token or pooled, pre-logits)."""
    x_train = torch.stack([f.image_embedding for f in scenes.train_features]).numpy()
    x_test = torch.stack([f.image_embedding for f in scenes.test_features]).numpy()
    y_train = np.array([s.object_class for s in scenes.train])
    y_test = np.array([s.object_class for s in scenes.test])
    return linear_probe(x_train, y_train, x_test, y_test, "object probe", "object class from the image embedding",
                        config, (len(y_train), len(y_test)))


def patch_rows(features: Sequence[PatchFeatures]) -> np.ndarray:
    """Final patch tokens of several scenes as rows [n * h * w, D] (scene by scene, row-major)."""
    return torch.cat([f.patch_tokens.reshape(-1, f.patch_tokens.shape[-1]) for f in features]).numpy()


def part_probe(scenes: EncodedScenes, config: LabConfig) -> ProbeResult:
    """Part label of each patch (background included) from its final token."""
    train, test = scenes.train[:config.patch_train_images], scenes.test[:config.patch_test_images]
    x_train = patch_rows(scenes.train_features[:len(train)])
    x_test = patch_rows(scenes.test_features[:len(test)])
    y_train = scene_part_labels(train, scenes.patch_size).reshape(-1)
    y_test = scene_part_labels(test, scenes.patch_size).reshape(-1)
    keep = subsample(len(y_train), config.max_probe_patches, config.seed)
    return linear_probe(x_train[keep], y_train[keep], x_test, y_test, "part probe",
                        "part label of each patch (background included) from its token", config, (len(train), len(test)))


# --------------------------------------------------------------------------------------------------- k-NN
def knn_accuracy(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                 k: int = 20, temperature: float = 0.07) -> float:
    """Weighted k-NN accuracy (as DINO's evaluation): cosine neighbours, votes exp(similarity / temperature).

    train_x [n, D], train_y [n] int64, test_x [m, D], test_y [m] -> accuracy in [0, 1].
    """
    similarity = F.normalize(test_x.float(), dim=-1) @ F.normalize(train_x.float(), dim=-1).T  # [m, n]
    top, index = similarity.topk(min(k, train_x.shape[0]), dim=1)  # [m, k]
    votes = torch.zeros(test_x.shape[0], int(train_y.max()) + 1)
    votes.scatter_add_(1, train_y[index], (top / temperature).exp())
    return float((votes.argmax(1) == test_y).float().mean())


def crop_side(side: int, patch_size: int, fraction: float) -> int:
    """A crop side of ``fraction`` of the scene side, in whole patches (at least one)."""
    return max(patch_size, int(side * fraction) // patch_size * patch_size)


def bag_of_crops_embeddings(encoder: Encoder, images: Sequence[Image.Image], crop_fraction: float = 0.5,
                            batch_size: int = 32, progress: ProgressFn | None = None) -> torch.Tensor:
    """Per image, the mean image embedding of its tiles, each crop embedded on its own at its own resolution.

    Images must share one size. Returns [n, D].
    """
    width, height = images[0].size
    if any(image.size != (width, height) for image in images):
        raise BadRequest("bag_of_crops_embeddings needs images of one size")
    boxes = tile_boxes(width, height, crop_side(min(width, height), encoder.patch_size, crop_fraction))
    crops = [image.crop(box) for image in images for box in boxes]
    embeddings = []
    for start in range(0, len(crops), batch_size):
        batch = torch.stack([encoder.to_tensor(crop) for crop in crops[start:start + batch_size]])  # [B, 3, c, c]
        embeddings += [f.image_embedding for f in encoder.forward_batch(batch)]
        if progress is not None:
            progress(min(start + batch_size, len(crops)) // len(boxes), len(images))
    return torch.stack(embeddings).reshape(len(images), len(boxes), -1).mean(1)  # [n, D]


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
    y_train = torch.tensor([s.object_class for s in scenes.train])
    y_test = torch.tensor([s.object_class for s in scenes.test])

    def accuracy(train_x: torch.Tensor, test_x: torch.Tensor) -> float:
        return knn_accuracy(train_x, y_train, test_x, y_test, config.knn_k, config.knn_temperature)

    class_token = None
    if encoder.has_class_token:
        class_token = accuracy(torch.stack([f.cls_token for f in scenes.train_features]),
                               torch.stack([f.cls_token for f in scenes.test_features]))
    patch_mean = accuracy(torch.stack([f.patch_tokens.mean((0, 1)) for f in scenes.train_features]),
                          torch.stack([f.patch_tokens.mean((0, 1)) for f in scenes.test_features]))
    bags = bag_of_crops_embeddings(encoder, as_images(scenes.train + scenes.test), config.crop_fraction,
                                   config.batch_size, progress)
    crop = crop_side(scenes.size, encoder.patch_size, config.crop_fraction)
    _, counts = torch.unique(y_test, return_counts=True)
    return KNNResult(class_token, patch_mean, accuracy(bags[:len(y_train)], bags[len(y_train):]),
                     float(counts.max() / counts.sum()), config.knn_k, config.knn_temperature, crop,
                     len(tile_boxes(scenes.size, scenes.size, crop)), len(y_train), len(y_test), config.seed)


# --------------------------------------------------------------------------------------------------- location probe

def location_support(encoder: Encoder) -> str | None:
    """None when the location probe runs on this encoder, else why not."""
    from timm.models.vision_transformer import VisionTransformer

    if not isinstance(encoder.model, VisionTransformer):
        return f"{type(encoder.model).__name__} is not a timm VisionTransformer"
    if encoder.model.pos_embed is None:
        return "the model has no absolute position embedding to swap"
    return None


def misplaced_tokens(encoder: Encoder, images: Sequence[Image.Image], ratio: float, generator: torch.Generator,
                     batch_size: int = 32, progress: ProgressFn | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Final patch tokens [n, L, D] of same-size images with a ``ratio`` of tokens swapped, and swapped [n, L]."""
    out_tokens, out_swapped = [], []
    for start in range(0, len(images), batch_size):
        batch = torch.stack([encoder.to_tensor(image) for image in images[start:start + batch_size]])
        grid = (batch.shape[-2] // encoder.patch_size, batch.shape[-1] // encoder.patch_size)
        swaps = [swap_positions(grid[0] * grid[1], ratio, generator) for _ in range(batch.shape[0])]
        position_ids = torch.stack([ids for ids, _ in swaps])  # [B, L]
        vit = encoder.model_for_grid(grid)
        with torch.inference_mode(), encoder.autocast():
            tokens = forward_with_positions(vit, batch.to(encoder.device), position_ids)
        out_tokens.append(tokens[:, encoder.num_prefix_tokens:].float().cpu())
        out_swapped.append(torch.stack([swapped for _, swapped in swaps]))
        if progress is not None:
            progress(min(start + batch_size, len(images)), len(images))
    return torch.cat(out_tokens), torch.cat(out_swapped)


@dataclass
class LocationResult:
    """How well a linear probe finds tokens that carry another token's position embedding (DILEMMA's task)."""

    probe: ProbeResult | None  # None when skipped
    auc: float | None  # ROC AUC of the probe's probabilities (chance 0.5)
    swap_ratio: float
    skipped: str | None = None  # why the probe could not run on this encoder
    map_image: np.ndarray | None = field(default=None, metadata=PICTURE)  # [H, W, 3] the scene of the map
    map_probability: np.ndarray | None = field(default=None, metadata=PICTURE)  # [h, w] P(swapped) per patch
    map_swapped: np.ndarray | None = field(default=None, metadata=PICTURE)  # [h, w] bool, the true swaps


def location_probe(encoder: Encoder, scenes: EncodedScenes, config: LabConfig, progress: ProgressFn | None = None,
                   ) -> LocationResult:
    """Swap a ``swap_ratio`` of position embeddings in each scene, probe the final tokens for the swapped ones,
    and map the probe's probabilities on the first test scene."""
    from sklearn.metrics import roc_auc_score

    reason = location_support(encoder)
    if reason is not None:
        return LocationResult(None, None, config.swap_ratio, skipped=reason)
    generator = torch.Generator().manual_seed(config.seed)
    train = as_images(scenes.train[:config.patch_train_images])
    test = as_images(scenes.test[:config.patch_test_images])
    tracker = _Tracker(len(train) + len(test), progress)
    train_tokens, train_swapped = misplaced_tokens(encoder, train, config.swap_ratio, generator, config.batch_size,
                                                   tracker.stage(len(train)))
    test_tokens, test_swapped = misplaced_tokens(encoder, test, config.swap_ratio, generator, config.batch_size,
                                                 tracker.stage(len(test)))
    x_train, y_train = train_tokens.flatten(0, 1).numpy(), train_swapped.flatten().numpy()
    keep = subsample(len(y_train), config.max_probe_patches, config.seed)
    probe = fit_linear_probe(x_train[keep], y_train[keep], config.seed, config.max_iter)
    x_test, y_test = test_tokens.flatten(0, 1).numpy(), test_swapped.flatten().numpy()
    result = score_probe(probe, x_test, y_test, "location probe", "swapped position embedding of each patch from its token",
                         len(keep), (len(train), len(test)), config.seed)
    probability = probe.predict_proba(np.asarray(x_test, np.float64))[:, 1]  # [m]
    grid = scenes.test_features[0].grid_hw
    L = grid[0] * grid[1]
    return LocationResult(result, float(roc_auc_score(y_test, probability)), config.swap_ratio,
                          map_image=scenes.test[0].image, map_probability=probability[:L].reshape(grid),
                          map_swapped=y_test[:L].reshape(grid))


# --------------------------------------------------------------------------------------------------- part maps
@dataclass
class PartMapResult:
    """k-means part maps of patch tokens against the ground-truth patch part labels."""

    ari_per_image: float  # mean over scenes of the adjusted Rand index
    ari_pooled: float  # over all patches of all scenes (clusters must mean the same part everywhere)
    chance_per_image: float  # the same with each scene's cluster labels shuffled over its patches
    chance_pooled: float
    position_ari_per_image: float  # the same clusters against the patches' grid position (4 x 4 blocks)
    centred_ari_per_image: float  # ARI per scene of a k-means after `remove_position_mean` (location taken out)
    k: int  # clusters = ground-truth labels present
    images: int
    patches: int
    seed: int
    example_ari: float  # the first scene's ARI
    example_image: np.ndarray | None = field(default=None, metadata=PICTURE)  # [H, W, 3] the first scene
    example_clusters: np.ndarray | None = field(default=None, metadata=PICTURE)  # [h, w] its k-means labels
    example_truth: np.ndarray | None = field(default=None, metadata=PICTURE)  # [h, w] its part labels


def part_map_agreement(grids: Sequence[torch.Tensor], truth: Sequence[np.ndarray], k: int | None = None, seed: int = 0,
                       images: Sequence[np.ndarray] | None = None) -> PartMapResult:
    """k-means (`ssl_core.analyses.parts.part_maps`) of patch grids [h, w, D] against label maps [h, w] of the same grids.

    ``k`` defaults to the number of distinct labels in ``truth``; ``images`` (optional) keeps the first for display.
    """
    if len(grids) != len(truth) or not grids:
        raise BadRequest(f"part_map_agreement needs one label map per grid, got {len(grids)} grids and {len(truth)} maps")
    truth = [np.asarray(t, np.int64) for t in truth]
    for grid, labels in zip(grids, truth):
        if tuple(grid.shape[:2]) != labels.shape:
            raise BadRequest(f"a label map of shape {labels.shape} does not match its {tuple(grid.shape[:2])} grid")
    k = int(k or len(np.unique(np.concatenate([t.ravel() for t in truth]))))
    clusters = [c.numpy() for c in part_maps(list(grids), k, seed).labels]
    per_image = [agreement_with_truth(c, t, seed + i) for i, (c, t) in enumerate(zip(clusters, truth))]
    position = [agreement_with_truth(c, grid_blocks(c.shape), seed).ari for c in clusters]
    pooled = agreement_with_truth(np.concatenate([c.ravel() for c in clusters]),
                                  np.concatenate([t.ravel() for t in truth]), seed)
    centred = part_maps(remove_position_mean(list(grids))[0], k, seed).labels
    centred_ari = np.mean([agreement_with_truth(c, t, seed).ari for c, t in zip(centred, truth)])
    return PartMapResult(
        float(np.mean([a.ari for a in per_image])), pooled.ari, float(np.mean([a.shuffled for a in per_image])),
        pooled.shuffled, float(np.mean(position)), float(centred_ari), k, len(grids), sum(t.size for t in truth),
        seed, per_image[0].ari, None if images is None else np.asarray(images[0]), clusters[0], truth[0])


def grid_blocks(grid_hw: tuple[int, int], blocks: int = 4) -> np.ndarray:
    """Each patch's block of a ``blocks`` x ``blocks`` split of the grid: [h, w] int64 labels."""
    h, w = grid_hw
    return (np.arange(h)[:, None] * blocks // h) * blocks + np.arange(w)[None, :] * blocks // w


def part_map_probe(scenes: EncodedScenes, config: LabConfig) -> PartMapResult:
    """`part_map_agreement` on the first ``part_map_images`` test scenes' final patch tokens."""
    chosen = scenes.test[:config.part_map_images]
    return part_map_agreement([f.patch_tokens for f in scenes.test_features[:len(chosen)]],
                              list(scene_part_labels(chosen, scenes.patch_size)), seed=config.seed,
                              images=[s.image for s in chosen])


# --------------------------------------------------------------------------------------------------- CKA
@dataclass
class CKAComparison:
    result: CKAResult  # the layer-by-layer map (images, samples, pooling inside)
    image_size: int  # side the scenes were drawn at
    seed: int

    @property
    def diagonal(self) -> list[float]:
        """CKA between the same block of both encoders (as deep as the shallower one)."""
        n = min(self.result.matrix.shape)
        return [float(self.result.matrix[i, i]) for i in range(n)]


def cka_probe(encoder_a: Encoder, encoder_b: Encoder, config: LabConfig, progress: ProgressFn | None = None,
              ) -> CKAComparison:
    """Layer-by-layer linear CKA between two encoders on the first ``cka_images`` test scenes."""
    size = max(scene_size(encoder_a), scene_size(encoder_b))
    images = as_images(heldout_scenes(config, "test", size, config.cka_images))
    return CKAComparison(compare_encoders(encoder_a, encoder_b, images, progress=progress), size, config.seed)


# --------------------------------------------------------------------------------------------------- MAE / CAE
@dataclass
class MIMResult:
    """Masked image modeling on held-out scenes: reconstruction, and (CAE) representation-space alignment."""

    kind: str  # "MAE" or "CAE"
    mask_ratio: float
    reconstruction_mse: float  # the model's pixel loss over hidden patches
    zero_prediction_mse: float  # the same loss for a prediction of 0 everywhere (a flat patch at its own mean for
    #                             normalised-pixel targets)
    norm_pix: bool
    alignment_cosine: float | None  # CAE: cos(predicted latent, the encoder's own latent) of hidden patches
    mismatched_cosine: float | None  # CAE: the same against another scene's latents (chance)
    alignment_mse: float | None  # CAE: its alignment loss (MSE of standardised latents)
    images: int
    hidden_patches: int  # per image
    seed: int


def mim_kind(encoder: Encoder) -> str | None:
    """"MAE" or "CAE" when the encoder's weights file carries PatchLens's MAE or CAE decoder metadata."""
    from ssl_core.mim.cae import METADATA_KEY as CAE_KEY
    from ssl_core.mim.mae import METADATA_KEY as MAE_KEY

    path = encoder.weights_file
    if path is None or path.suffix != ".safetensors":
        return None
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    return "CAE" if CAE_KEY in metadata else "MAE" if MAE_KEY in metadata else None


def mim_probe(encoder: Encoder, config: LabConfig, progress: ProgressFn | None = None) -> MIMResult | None:
    """Reconstruction (and CAE alignment) on the first ``mim_images`` test scenes; None for non-MIM weights."""
    kind = mim_kind(encoder)
    if kind is None:
        return None
    if kind == "MAE":
        from ssl_core.mim.mae import load_mae

        model = load_mae(encoder.weights_file)
        ratio, norm_pix = config.mask_ratio or MAE_MASK_RATIO, bool(model.norm_pix_loss)
    else:
        from ssl_core.mim.cae import load_cae

        model = load_cae(encoder.weights_file)
        ratio, norm_pix = config.mask_ratio or model.config.mask_ratio, bool(model.config.norm_pix_loss)
    model = model.eval().to(encoder.device)
    grid = tuple(model.grid_hw)
    scenes = heldout_scenes(config, "test", model.img_size, config.mim_images)
    masks = torch.from_numpy(np.stack([random_mask(grid, ratio, seed=config.seed * SPLIT_STRIDE + i).reshape(-1)
                                       for i in range(len(scenes))]))  # [n, L] bool
    sums = dict(reconstruction=0.0, zero=0.0, alignment=0.0)
    predicted, own = [], []  # CAE: latents of the hidden patches, [B, M, D] per chunk
    for start in range(0, len(scenes), config.batch_size):
        chunk = scenes[start:start + config.batch_size]
        pixels = torch.from_numpy(np.stack([s.image for s in chunk])).permute(0, 3, 1, 2)  # [B, 3, S, S] uint8
        imgs, mask = encoder.normalize(pixels.to(encoder.device)), masks[start:start + len(chunk)].to(encoder.device)
        with torch.inference_mode():
            if kind == "MAE":
                loss, _, _ = model.forward_loss(imgs, ratio, mask=mask)
                targets = model.patch_targets(imgs)[mask]  # [B*M, K]
            else:
                losses = model.forward_loss(imgs, ratio, mask=mask)
                loss = losses.reconstruction
                sums["alignment"] += float(losses.alignment) * len(chunk)
                view = model.forward_encoder(imgs, 0.0, mask)
                targets = model.pixel_targets(imgs, view.ids_shuffle, int(mask[0].sum()))  # [B, M, K]
                guess, truth = model.predict_masked_latents(imgs, mask)
                predicted.append(guess.float().cpu())
                own.append(truth.float().cpu())
        sums["reconstruction"] += float(loss) * len(chunk)
        sums["zero"] += float((targets.float() ** 2).mean()) * len(chunk)
        if progress is not None:
            progress(start + len(chunk), len(scenes))
    mean = {key: value / len(scenes) for key, value in sums.items()}
    cosine = mismatched = alignment = None
    if kind == "CAE":
        predicted, own = torch.cat(predicted), torch.cat(own)  # [n, M, D]
        cosine = float(F.cosine_similarity(predicted, own, dim=-1).mean())
        mismatched = float(F.cosine_similarity(predicted, own.roll(1, dims=0), dim=-1).mean())  # the next scene's
        alignment = mean["alignment"]
    return MIMResult(kind, float(ratio), mean["reconstruction"], mean["zero"], norm_pix, cosine, mismatched, alignment,
                     len(scenes), int(masks[0].sum()), config.seed)


# --------------------------------------------------------------------------------------------------- the whole Lab
@dataclass
class EncoderLab:
    """Every single-encoder analysis of one encoder."""

    name: str
    description: str
    weights: str  # model and weights fingerprint (`Encoder.key`)
    trained: bool
    scene_size: int
    object_probe: ProbeResult
    part_probe: ProbeResult
    knn: KNNResult
    location: LocationResult
    part_map: PartMapResult
    mim: MIMResult | None
    seconds: float

    def rows(self) -> list[Row]:
        """This encoder's table: (measure, value, chance, samples) rows of every result."""
        results = [self.object_probe, self.part_probe, self.knn, self.location, self.part_map, self.mim]
        return [row for result in results if result is not None for row in result_rows(result)]

    def to_markdown(self) -> str:
        return f"{self.description} (Lab in {self.seconds:.1f} s)\n\n" + rows_markdown(self.rows())


Row = tuple[str, str, str, str]  # (measure, value, chance, samples)


def result_rows(result: ProbeResult | KNNResult | LocationResult | PartMapResult | MIMResult) -> list[Row]:
    """Table rows (measure, value, chance, samples) of one analysis result."""
    if isinstance(result, ProbeResult):
        unit = "scenes" if result.n_train == result.n_train_images else (
            f"patches of {result.n_train_images} / {result.n_test_images} scenes")
        return [(f"{result.name}: accuracy", _f(result.accuracy), _f(result.chance_accuracy),
                 f"{result.n_train} / {result.n_test} {unit}"),
                (f"{result.name}: balanced accuracy", _f(result.balanced_accuracy), _f(result.chance_balanced),
                 f"{result.classes} classes, seed {result.seed}")]
    if isinstance(result, KNNResult):
        return [("k-NN: class token", _f(result.class_token), _f(result.chance_accuracy),
                 f"{result.n_train} / {result.n_test} scenes, k={result.k}, seed {result.seed}"),
                ("k-NN: mean of patch tokens", _f(result.patch_mean), _f(result.chance_accuracy), ""),
                ("k-NN: bag of crops", _f(result.bag_of_crops), _f(result.chance_accuracy),
                 f"{result.crops_per_image} crops of {result.crop_size} px")]
    if isinstance(result, LocationResult):
        if result.probe is None:
            return [("location probe", "skipped", "", result.skipped or "")]
        rows = result_rows(result.probe)
        return rows + [("location probe: ROC AUC", _f(result.auc), "0.500", f"{result.swap_ratio:.0%} of tokens swapped")]
    if isinstance(result, PartMapResult):
        return [("part map ARI (per scene)", _f(result.ari_per_image), _f(result.chance_per_image),
                 f"{result.images} scenes, k={result.k}, seed {result.seed}"),
                ("part map ARI (pooled)", _f(result.ari_pooled), _f(result.chance_pooled), f"{result.patches} patches"),
                ("part map ARI vs grid position", _f(result.position_ari_per_image), "", "4 x 4 blocks of the grid"),
                ("part map ARI, position mean removed", _f(result.centred_ari_per_image), "",
                 "each grid position's mean token over the scenes subtracted first")]
    if isinstance(result, MIMResult):
        rows = [(f"{result.kind} reconstruction MSE (lower is better)", _f(result.reconstruction_mse),
                 _f(result.zero_prediction_mse) + " (predict 0)", f"{result.images} scenes, {result.hidden_patches} "
                 f"hidden patches each ({result.mask_ratio:.0%}), seed {result.seed}")]
        if result.alignment_cosine is not None:
            rows.append(("CAE latent alignment: cosine", _f(result.alignment_cosine),
                         _f(result.mismatched_cosine) + " (other scenes)", f"alignment MSE {_f(result.alignment_mse)}"))
        return rows
    raise TypeError(f"no table rows for {type(result).__name__}")


def rows_markdown(rows: Sequence[Row]) -> str:
    return markdown_table(["measure", "value", "chance", "samples (train / test)"], rows)


@dataclass
class LabReport:
    config: LabConfig
    encoders: list[EncoderLab]
    cka: list[CKAComparison]
    seconds: float

    def encoder(self, name: str) -> EncoderLab | None:
        return next((e for e in self.encoders if e.name == name), None)

    def to_markdown(self) -> str:
        """The summary tables (one row per encoder per analysis), each encoder's own table, and the CKA maps."""
        c = self.config
        out = [f"Held-out parts-world scenes, {c.describe()}. Chance levels in parentheses."]

        def section(title: str, header: list[str], rows: list[list[str]], intro: str = "") -> None:
            out.extend(["", f"### {title}", ""] + ([intro, ""] if intro else []) + [markdown_table(header, rows)])

        section("Object-level vs part-level linear probes",
                ["encoder", "object acc.", "object bal. acc.", "part acc.", "part bal. acc."],
                [[_label(e), _fc(e.object_probe.accuracy, e.object_probe.chance_accuracy),
                  _fc(e.object_probe.balanced_accuracy, e.object_probe.chance_balanced),
                  _fc(e.part_probe.accuracy, e.part_probe.chance_accuracy),
                  _fc(e.part_probe.balanced_accuracy, e.part_probe.chance_balanced)] for e in self.encoders])
        section("k-NN object accuracy (BagSSL)", ["encoder", "class token", "mean of patch tokens", "bag of crops",
                                                  "chance"],
                [[_label(e), _f(e.knn.class_token), _f(e.knn.patch_mean),
                  f"{_f(e.knn.bag_of_crops)} ({e.knn.crops_per_image} x {e.knn.crop_size} px)",
                  _f(e.knn.chance_accuracy)] for e in self.encoders])
        section("Location probe: tokens with a swapped position embedding (DILEMMA)",
                ["encoder", "accuracy (majority)", "balanced accuracy (0.5)", "ROC AUC (0.5)"],
                [[_label(e), f"skipped: {e.location.skipped}", "", ""] if e.location.probe is None else
                 [_label(e), _fc(e.location.probe.accuracy, e.location.probe.chance_accuracy),
                  _f(e.location.probe.balanced_accuracy), _f(e.location.auc)] for e in self.encoders])
        section("k-means part maps vs ground-truth part labels (adjusted Rand index)",
                ["encoder", "ARI per scene (shuffled)", "ARI pooled (shuffled)", "ARI vs grid position",
                 "ARI per scene, position mean removed", "k"],
                [[_label(e), _fc(e.part_map.ari_per_image, e.part_map.chance_per_image),
                  _fc(e.part_map.ari_pooled, e.part_map.chance_pooled), _f(e.part_map.position_ari_per_image),
                  _f(e.part_map.centred_ari_per_image), str(e.part_map.k)] for e in self.encoders])
        mims = [e for e in self.encoders if e.mim is not None]
        if mims:
            section("Masked image modeling on held-out scenes",
                    ["encoder", "mask", "reconstruction MSE (predict 0)", "latent cosine (other scenes)",
                     "alignment MSE"],
                    [[_label(e), f"{e.mim.mask_ratio:.0%} of {e.mim.images} scenes",
                      _fc(e.mim.reconstruction_mse, e.mim.zero_prediction_mse),
                      _fc(e.mim.alignment_cosine, e.mim.mismatched_cosine), _f(e.mim.alignment_mse)] for e in mims])
        for comparison in self.cka:
            r = comparison.result
            section(f"CKA: {r.model_a} (rows) vs {r.model_b} (columns)", ["", *r.labels_b],
                    [[label, *(_f(v) for v in row)] for label, row in zip(r.labels_a, r.matrix)], r.describe() + ".")
        out += ["", "### Per encoder"]
        for e in self.encoders:
            out += ["", f"#### {e.name}", "", e.to_markdown()]
        return "\n".join(out).rstrip() + "\n"

    def to_dict(self) -> dict:
        """The numbers (no pictures) as plain JSON-able values."""
        return {"config": asdict(self.config), "seconds": round(self.seconds, 2),
                "encoders": [result_numbers(e) for e in self.encoders],
                "cka": [{"model_a": c.result.model_a, "model_b": c.result.model_b, "image_size": c.image_size,
                         "seed": c.seed, "images": c.result.images, "samples": c.result.samples,
                         "pooling": c.result.pooling, "grid_size": c.result.grid_size, "debiased": c.result.debiased,
                         "matrix": np.round(c.result.matrix, 4).tolist()} for c in self.cka]}


# --------------------------------------------------------------------------------------------------- findings
SUPERVISED = ("patchlens-sup",)
JOINT_EMBEDDING = ("patchlens-dino", "patchlens-dilemma")
MIM = ("patchlens-mae", "patchlens-cae")
MARGIN = 0.02  # differences smaller than this are called ties


def findings(report: LabReport) -> list[str]:
    """One plain sentence per paper claim, read off the bundled models' numbers (untrained models are ignored);
    a claim whose models are missing says so."""
    trained = {e.name: e for e in report.encoders if e.trained}

    def pick(names: Sequence[str]) -> list[EncoderLab]:
        return [trained[n] for n in names if n in trained]

    def best(items: list[EncoderLab], value: Callable[[EncoderLab], float]) -> tuple[str, float]:
        top = max(items, key=value)
        return top.name, value(top)

    out = []
    sup, ssl = pick(SUPERVISED), pick(JOINT_EMBEDDING + MIM)
    if sup and ssl:
        obj = lambda e: e.object_probe.balanced_accuracy  # noqa: E731
        part = lambda e: e.part_probe.balanced_accuracy  # noqa: E731
        s_obj, s_part = obj(sup[0]), part(sup[0])
        ssl_obj, ssl_part = best(ssl, obj), best(ssl, part)
        beat = [e.name for e in ssl if part(e) > s_part + MARGIN]
        out.append(
            f"**Part-aware SSL** (supervised best at object level; self-supervised better at part level): object "
            f"probe balanced accuracy, supervised {s_obj:.3f} vs best self-supervised {ssl_obj[1]:.3f} "
            f"({ssl_obj[0]}) — {_verdict(s_obj - ssl_obj[1])}; part probe, supervised {s_part:.3f} vs best "
            f"self-supervised {ssl_part[1]:.3f} ({ssl_part[0]}) — {_verdict(ssl_part[1] - s_part)} "
            f"({len(beat)} of {len(ssl)} self-supervised models beat supervised by more than {MARGIN}).")
    else:
        out.append("**Part-aware SSL**: not tested (needs patchlens-sup and a self-supervised bundled model).")
    bag = [e for e in trained.values() if e.knn.class_token is not None]
    if bag:
        close = [e.name for e in bag if abs(e.knn.bag_of_crops - e.knn.class_token) <= 0.05]
        rows = "; ".join(f"{e.name} {e.knn.class_token:.3f} / {e.knn.patch_mean:.3f} / {e.knn.bag_of_crops:.3f}"
                         for e in bag)
        out.append(f"**BagSSL** (the image embedding is about the average of its crops' embeddings, so k-NN from a "
                   f"bag of crops does about as well): k-NN accuracy class token / mean of patch tokens / bag of "
                   f"crops: {rows}. Bag within 0.05 of the class token for {len(close)} of {len(bag)} models"
                   + (f" ({', '.join(close)})." if close else "."))
    dilemma = trained.get("patchlens-dilemma")
    located = [e for e in trained.values() if e.location.probe is not None and e is not dilemma]
    if dilemma is not None and dilemma.location.auc is not None and located:
        other = best(located, lambda e: e.location.auc)
        out.append(f"**DILEMMA** (a model trained to detect misplaced tokens encodes them; others do not): location "
                   f"probe ROC AUC, patchlens-dilemma {dilemma.location.auc:.3f} vs best other {other[1]:.3f} "
                   f"({other[0]}) — {_verdict(dilemma.location.auc - other[1])}; "
                   + ", ".join(f"{e.name} {e.location.auc:.3f}" for e in located) + " (chance 0.5).")
    else:
        out.append("**DILEMMA**: not tested (needs patchlens-dilemma and another trained model).")
    pair = next((c for c in report.cka if {c.result.model_a, c.result.model_b} == {"patchlens-sup", "patchlens-dino"}), None)
    if pair is not None:
        d = pair.diagonal
        out.append(f"**CKA** (supervised and contrastive models agree in early layers and diverge in the last ones): "
                   f"same-block CKA between patchlens-sup and patchlens-dino, block 0 to {len(d) - 1}: "
                   + ", ".join(f"{v:.2f}" for v in d) + f" — {_verdict(d[0] - d[-1], 'holds', 'does not hold')} "
                   f"(first block {'above' if d[0] > d[-1] else 'not above'} the last).")
    else:
        out.append("**CKA**: not tested (needs patchlens-sup and patchlens-dino).")
    if trained:
        above = [e.name for e in trained.values() if e.part_map.ari_per_image > e.part_map.chance_per_image + 0.1]
        top = best(list(trained.values()), lambda e: e.part_map.ari_per_image)
        located = [f"{e.name} ({e.part_map.position_ari_per_image:.3f} vs {e.part_map.ari_per_image:.3f}; "
                   f"{e.part_map.centred_ari_per_image:.3f} against parts once each position's mean is removed)"
                   for e in trained.values() if e.part_map.position_ari_per_image > e.part_map.ari_per_image]
        out.append(f"**Part maps**: k-means part maps agree with the ground truth well above chance (ARI per scene "
                   f"at least 0.1 over shuffled labels) for {len(above)} of {len(trained)} trained models; best "
                   f"{top[0]} at {top[1]:.3f}."
                   + (" Clusters that follow grid position more than parts (ARI against 4 x 4 grid blocks vs against "
                      "parts): " + ", ".join(located) + "." if located else ""))
    for e in pick(MIM):
        m = e.mim
        if m is None:
            continue
        below = "below" if m.reconstruction_mse < m.zero_prediction_mse else "not below"
        text = (f"**{m.kind}** ({e.name}): reconstruction MSE {m.reconstruction_mse:.3f} against "
                f"{m.zero_prediction_mse:.3f} for predicting 0 — {below} the baseline")
        if m.alignment_cosine is not None:
            text += (f"; predicted latents' cosine to the encoder's own {m.alignment_cosine:.3f} against "
                     f"{m.mismatched_cosine:.3f} for other scenes' latents")
        out.append(text + ".")
    untrained = [e for e in report.encoders if not e.trained]
    for e in untrained:
        out.append(f"**Random weights** ({e.name}): object probe {e.object_probe.balanced_accuracy:.3f} (chance "
                   f"{e.object_probe.chance_balanced:.3f}), part probe {e.part_probe.balanced_accuracy:.3f} (chance "
                   f"{e.part_probe.chance_balanced:.3f}), location AUC {_f(e.location.auc)}, part-map ARI "
                   f"{e.part_map.ari_per_image:.3f}: what an untrained ViT already gets from colours and layout.")
    return out


def _verdict(difference: float, yes: str = "holds", no: str = "does not hold") -> str:
    if abs(difference) < MARGIN:
        return "a tie here"
    return yes if difference > 0 else no


def _f(value: float | None) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def _fc(value: float | None, chance: float | None) -> str:
    """A value with its chance level (or baseline) in parentheses."""
    return f"{_f(value)} ({_f(chance)})"


def _label(e: EncoderLab) -> str:
    return e.name if e.trained else f"{e.name} (untrained)"


def result_numbers(obj):
    """A result dataclass (or list, or value) as JSON-able values, pictures left out."""
    if is_dataclass(obj):
        return {f.name: result_numbers(getattr(obj, f.name)) for f in fields(obj) if not f.metadata.get("picture")}
    if isinstance(obj, float):
        return None if math.isnan(obj) else round(obj, 5)
    if isinstance(obj, (list, tuple)):
        return [result_numbers(v) for v in obj]
    return obj


def run_encoder_lab(encoder: Encoder, config: LabConfig, progress: ProgressFn | None = None) -> EncoderLab:
    """Every single-encoder analysis; progress counts images passed through a model."""
    units = encoder_lab_units(encoder, config)
    tracker = _Tracker(units, progress)
    start = time.perf_counter()
    scenes = encode_scenes(encoder, config, tracker.stage(config.n_train + config.n_test))
    objects, parts = object_probe(scenes, config), part_probe(scenes, config)
    knn = knn_probe(encoder, scenes, config, tracker.stage(config.n_train + config.n_test))
    location = location_probe(encoder, scenes, config, tracker.stage(_location_units(encoder, config)))
    part_map = part_map_probe(scenes, config)
    mim = mim_probe(encoder, config, tracker.stage(_mim_units(encoder, config)))
    tracker.finish()
    return EncoderLab(encoder.name, encoder.describe(), encoder.key, encoder.trained, scenes.size, objects, parts, knn,
                      location, part_map, mim, time.perf_counter() - start)


def encoder_lab_units(encoder: Encoder, config: LabConfig) -> int:
    """Images passed through a model by `run_encoder_lab` (the progress total)."""
    return 2 * (config.n_train + config.n_test) + _location_units(encoder, config) + _mim_units(encoder, config)


def _location_units(encoder: Encoder, config: LabConfig) -> int:
    return 0 if location_support(encoder) else min(config.patch_train_images, config.n_train) + min(
        config.patch_test_images, config.n_test)


def _mim_units(encoder: Encoder, config: LabConfig) -> int:
    return config.mim_images if mim_kind(encoder) else 0


def default_cka_pairs(names: Sequence[str]) -> list[tuple[str, str]]:
    """The supervised bundled model against each other encoder when it is there (the CKA paper's supervised vs
    self-supervised comparison), else the first two encoders."""
    if "patchlens-sup" in names:
        return [("patchlens-sup", other) for other in names if other != "patchlens-sup"]
    return [(names[0], names[1])] if len(names) > 1 else []


def run_lab(encoders: dict[str, Encoder], config: LabConfig | None = None, progress: ProgressFn | None = None,
            cka_pairs: Sequence[tuple[str, str]] | None = None) -> LabReport:
    """The whole Lab on each encoder, and CKA maps between pairs (default `default_cka_pairs`)."""
    config = config or LabConfig()
    if not encoders:
        raise BadRequest("run_lab needs at least one encoder")
    pairs = default_cka_pairs(list(encoders)) if cka_pairs is None else list(cka_pairs)
    for a, b in pairs:
        for name in (a, b):
            if name not in encoders:
                raise BadRequest(f"CKA pair ({a}, {b}) names '{name}', which is not among the encoders "
                               f"({', '.join(encoders)})")
    units = [encoder_lab_units(e, config) for e in encoders.values()] + [2 * config.cka_images] * len(pairs)
    tracker = _Tracker(sum(units), progress)
    start = time.perf_counter()
    results = [run_encoder_lab(encoder, config, tracker.stage(n)) for encoder, n in zip(encoders.values(), units)]
    cka = [cka_probe(encoders[a], encoders[b], config, tracker.stage(2 * config.cka_images)) for a, b in pairs]
    tracker.finish()
    return LabReport(config, results, cka, time.perf_counter() - start)


class _Tracker:
    """Maps the progress of consecutive stages onto one (done, total) count."""

    def __init__(self, total: int, progress: ProgressFn | None):
        self.total, self.progress, self.offset = max(1, total), progress, 0

    def stage(self, size: int) -> ProgressFn | None:
        offset, self.offset = self.offset, self.offset + size
        if self.progress is None:
            return None
        return lambda done, total: self.progress(offset + round(size * done / max(total, 1)), self.total)

    def finish(self) -> None:
        if self.progress is not None:
            self.progress(self.total, self.total)


__all__ = ["LabConfig", "LabReport", "EncoderLab", "EncodedScenes", "ProbeResult", "KNNResult", "LocationResult",
           "PartMapResult", "CKAComparison", "MIMResult", "heldout_seeds", "heldout_scenes", "scene_size",
           "encode_scenes", "object_probe", "part_probe", "knn_probe", "knn_accuracy", "bag_of_crops_embeddings",
           "location_probe", "part_map_agreement", "grid_blocks",
           "part_map_probe", "cka_probe", "mim_probe", "mim_kind", "run_encoder_lab", "run_lab", "default_cka_pairs",
           "findings", "result_rows", "rows_markdown", "result_numbers"]
