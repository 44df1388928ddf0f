"""Part maps by k-means over patch tokens, fitted jointly over images (co-segmentation).

One k-means over the tokens of all images means a cluster colour names the same part in every image.
Tokens are L2-normalised first (spherical k-means: cosine geometry, as patch embeddings are compared by
cosine everywhere else in PatchLens). Initialisation is k-means++ from a seeded generator, so the same
inputs and seed give the same labels.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ssl_core.errors import BadRequest


@dataclass
class KMeansResult:
    labels: torch.Tensor  # [N] int64 in [0, k)
    centroids: torch.Tensor  # [k, D] unit vectors
    inertia: float  # sum over points of (1 - cosine to their centroid)


def kmeans(x: torch.Tensor, k: int, seed: int = 0, iters: int = 50, n_init: int = 3) -> KMeansResult:
    """Spherical k-means of x [N, D]; the best of ``n_init`` seeded k-means++ starts."""
    if not 1 <= k <= x.shape[0]:
        raise BadRequest(f"k must be between 1 and the number of points ({x.shape[0]}), got {k}")
    points = F.normalize(x.float(), dim=-1)
    generator = torch.Generator().manual_seed(seed)
    best: KMeansResult | None = None
    for _ in range(n_init):
        centroids = _kmeans_pp(points, k, generator)
        for _ in range(iters):
            labels = (points @ centroids.T).argmax(1)
            updated = torch.zeros_like(centroids).index_add_(0, labels, points)
            empty = updated.norm(dim=1) == 0
            updated[empty] = centroids[empty]  # an empty cluster keeps its centroid
            updated = F.normalize(updated, dim=-1)
            if torch.allclose(updated, centroids, atol=1e-6):
                break
            centroids = updated
        similarity = points @ centroids.T
        labels = similarity.argmax(1)
        inertia = float((1 - similarity.gather(1, labels[:, None])).sum())
        if best is None or inertia < best.inertia:
            best = KMeansResult(labels, centroids, inertia)
    return _ordered(best, k)


def _kmeans_pp(points: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ starting centroids [k, D] from unit points [N, D] (cosine distance)."""
    first = torch.randint(points.shape[0], (1,), generator=generator)
    chosen = [points[first[0]]]
    distance = (1 - points @ chosen[0]).clamp_min(0)
    for _ in range(1, k):
        weights = distance if distance.sum() > 0 else torch.ones_like(distance)
        index = torch.multinomial(weights.cpu(), 1, generator=generator)[0]  # drawn on the CPU: any device, same parts
        chosen.append(points[index])
        distance = torch.minimum(distance, (1 - points @ points[index]).clamp_min(0))
    return torch.stack(chosen)


def _ordered(result: KMeansResult, k: int) -> KMeansResult:
    """Relabel clusters by decreasing size, so label 0 is the largest part (stable colours)."""
    counts = torch.bincount(result.labels, minlength=k)
    order = torch.argsort(counts, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(k, device=order.device)
    return KMeansResult(rank[result.labels], result.centroids[order], result.inertia)


@dataclass
class PartMaps:
    labels: list[torch.Tensor]  # per image [h, w] int64; -1 where excluded (background)
    counts: torch.Tensor  # [k] patches per part over all images
    counts_per_image: torch.Tensor  # [images, k]
    centroids: torch.Tensor  # [k, D] (one k-means), or [images, k, D] (each image on its own: labels match only
    #                          within an image)


def part_maps(grids: list[torch.Tensor], k: int, seed: int = 0, foreground: list[torch.Tensor] | None = None,
              separate: bool = False) -> PartMaps:
    """Co-segment patch grids [h, w, D] into k parts with one k-means (``separate``: one k-means per image);
    optional foreground masks [h, w]."""
    masks = foreground or [torch.ones(g.shape[:2], dtype=torch.bool) for g in grids]
    if separate:
        each = [part_maps([g], k, seed, [m]) for g, m in zip(grids, masks)]
        per_image = torch.cat([p.counts_per_image for p in each])
        centroids = torch.stack([p.centroids for p in each])  # [images, k, D]
        return PartMaps([p.labels[0] for p in each], per_image.sum(0), per_image, centroids)
    selected = torch.cat([g[m] for g, m in zip(grids, masks)])  # [N, D]
    result = kmeans(selected, k, seed)
    labels, start = [], 0
    for grid, mask in zip(grids, masks):
        label_map = torch.full(grid.shape[:2], -1, dtype=torch.long)
        count = int(mask.sum())
        label_map[mask] = result.labels[start:start + count]
        start += count
        labels.append(label_map)
    per_image = torch.stack([torch.bincount(l[l >= 0], minlength=k) for l in labels])
    return PartMaps(labels, per_image.sum(0), per_image, result.centroids)


def remove_position_mean(grids: list[torch.Tensor], require: bool = False) -> tuple[list[torch.Tensor], int]:
    """Subtract from each patch token the mean token at its grid position over the images with the same grid.

    What the tokens of one place share across images is location, not content; MIM models' last-block tokens
    carry much of it, so their k-means parts follow the grid until it is removed (docs/lab.md measures both).
    grids: [h, w, D] each. Returns the centred grids and how many images were centred: an image alone with its
    grid size has no estimate and is returned unchanged (``require``: a `BadRequest` when no image is centred).
    """
    by_grid: dict[tuple[int, int], list[int]] = {}
    for i, grid in enumerate(grids):
        by_grid.setdefault(tuple(grid.shape[:2]), []).append(i)
    out = list(grids)
    centred = 0
    for members in by_grid.values():
        if len(members) < 2:
            continue
        mean = torch.stack([grids[i] for i in members]).mean(0)  # [h, w, D]
        for i in members:
            out[i] = grids[i] - mean
        centred += len(members)
    if require and not centred:
        raise BadRequest("removing each position's mean token needs at least two images with the same patch grid "
                         "(same aspect ratio); add more images")
    return out, centred


def check_part_count(grids: list[torch.Tensor], k: int, foreground: list[torch.Tensor] | None = None,
                     separate: bool = False, names: list[str] | None = None) -> int:
    """The number of patches `part_maps` would cluster (foreground only where masks [h, w] are given); a
    `BadRequest` when that is fewer than ``k``, or (``separate``) when one image alone has fewer than ``k``."""
    if foreground is not None:
        selected = [int(m.sum()) for m in foreground]
    else:
        selected = [g.shape[0] * g.shape[1] for g in grids]
    total = sum(selected)
    if total < k:
        raise BadRequest(f"{total} patches are selected, fewer than k = {k} parts")
    if separate and min(selected) < k:
        index = selected.index(min(selected))
        name = names[index] if names else f"image {index}"
        raise BadRequest(f"{name}: {min(selected)} patches are selected, fewer than k = {k} parts for the image on "
                         f"its own (lower k or the foreground threshold)")
    return total


@dataclass
class Agreement:
    """Adjusted Rand index of a part map against ground-truth labels, with the same map's labels shuffled."""

    ari: float
    shuffled: float  # chance level: the ARI of the same clusters in a random order


def agreement_with_truth(clusters: np.ndarray | torch.Tensor, truth: np.ndarray, seed: int = 0) -> Agreement:
    """ARI between cluster labels and ground-truth labels of the same patches (any equal shapes), and its chance."""
    from sklearn.metrics import adjusted_rand_score

    clusters = np.asarray(clusters).ravel()
    truth = np.asarray(truth).ravel()
    if clusters.shape != truth.shape:
        raise BadRequest(f"{clusters.size} cluster labels cannot be compared with {truth.size} ground-truth labels")
    shuffled = np.random.default_rng(seed).permutation(clusters)
    return Agreement(float(adjusted_rand_score(truth, clusters)), float(adjusted_rand_score(truth, shuffled)))
