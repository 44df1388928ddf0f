"""Centered kernel alignment (CKA) between representations, and layer-by-layer CKA maps between encoders.

Linear CKA (Kornblith et al., 2019) of X [n, d1] and Y [n, d2], with column-centred features:

    CKA(X, Y) = ||Yᵀ X||²_F / (||Xᵀ X||_F ||Yᵀ Y||_F)

which equals HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)) for the linear kernels K = XXᵀ, L = YYᵀ. It is invariant
to orthogonal transforms and isotropic scaling of either side, and 1 for a representation with itself.

Debiased CKA replaces HSIC by its unbiased estimator (Song et al., 2012; used for CKA by Nguyen et al., 2021),
which removes the pull towards 1 that linear CKA shows when n is small next to the dimension:

    HSIC_1(K, L) = [tr(K̃L̃) + 1ᵀK̃1 · 1ᵀL̃1 / ((n-1)(n-2)) - 2/(n-2) · 1ᵀK̃L̃1] / (n(n-3)),  K̃ = K with zero diagonal

computed here in feature space (no n x n matrix) for centred features, where it reduces to
``tr(KL) - n/(n-2) Σ_i K_ii L_ii + tr(K) tr(L) / ((n-1)(n-2))`` up to the common factor. It needs n >= 4.

**Per-image representations for a CKA map** (`layer_representations`): the residual stream after each block,
summarised per image in one of two ways, so encoders of any patch size and image size line up row for row:

* ``"grid"`` (default): each image's token grid is average-pooled to a common ``grid_size`` x ``grid_size`` grid
  (`torch.nn.functional.adaptive_avg_pool2d`); one row per pooled cell, so n = images x grid_size².
  Compares what the encoders say about the same image regions; more rows than images for a few images.
* ``"mean"``: the mean patch token per image; n = images. The classic per-example representation.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ssl_core.errors import BadRequest
from ssl_core.progress import ProgressFn

if TYPE_CHECKING:
    from ssl_core.data.images import ImageSource
    from ssl_core.features.encoder import Encoder

POOLINGS = ("grid", "mean")


# --------------------------------------------------------------------------------------------------- the math
@dataclass
class _Centred:
    """A representation prepared once for many CKA pairs."""

    x: torch.Tensor  # [n, d] centred, float64
    gram: torch.Tensor | None  # [n, n] X Xᵀ, kept when n <= d (cheaper cross terms)
    row_sq: torch.Tensor  # [n] squared row norms: the diagonal of the Gram matrix


def _prepare(x: torch.Tensor | np.ndarray) -> _Centred:
    x = torch.as_tensor(x).double()
    if x.ndim != 2:
        raise BadRequest(f"a representation must be [n, d], got shape {tuple(x.shape)}")
    x = x - x.mean(0, keepdim=True)
    n, d = x.shape
    return _Centred(x, x @ x.T if n <= d else None, (x * x).sum(1))


def _cross(a: _Centred, b: _Centred) -> float:
    """tr(K L) = ||Yᵀ X||²_F, through the Gram matrices when both are kept (n small next to d)."""
    if a.gram is not None and b.gram is not None:
        return float((a.gram * b.gram).sum())
    return float(((b.x.T @ a.x) ** 2).sum())


def _hsic(a: _Centred, b: _Centred, debiased: bool) -> float:
    """HSIC of two prepared representations, up to a factor common to all pairs with the same n."""
    trace_kl = _cross(a, b)
    if not debiased:
        return trace_kl
    n = a.x.shape[0]
    diagonal = float(a.row_sq @ b.row_sq)
    return trace_kl - n / (n - 2) * diagonal + float(a.row_sq.sum()) * float(b.row_sq.sum()) / ((n - 1) * (n - 2))


def _check_pair(n_a: int, n_b: int, debiased: bool) -> None:
    if n_a != n_b:
        raise BadRequest(f"representations must have the same number of rows (examples), got {n_a} and {n_b}")
    if n_a < (4 if debiased else 2):
        raise BadRequest(f"CKA needs at least {4 if debiased else 2} examples{' (debiased)' if debiased else ''}, got {n_a}")


def _cka(a: _Centred, b: _Centred, self_a: float, self_b: float, debiased: bool) -> float:
    denominator = np.sqrt(max(self_a, 0.0) * max(self_b, 0.0))
    return _hsic(a, b, debiased) / denominator if denominator > 0 else 0.0


def linear_cka(x: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray, debiased: bool = False) -> float:
    """Linear CKA of two representations of the same n examples: x [n, d1], y [n, d2] (see the module docstring)."""
    a, b = _prepare(x), _prepare(y)
    _check_pair(a.x.shape[0], b.x.shape[0], debiased)
    return _cka(a, b, _hsic(a, a, debiased), _hsic(b, b, debiased), debiased)


def cka_matrix(layers_a: Sequence[torch.Tensor | np.ndarray], layers_b: Sequence[torch.Tensor | np.ndarray] | None = None,
               debiased: bool = False, progress: ProgressFn | None = None) -> np.ndarray:
    """CKA between every representation of ``layers_a`` and every one of ``layers_b`` (default: ``layers_a``).

    Each is [n, d] over the same n examples. Returns [La, Lb]; with ``layers_b`` None the map is symmetric with
    ones on the diagonal and only half is computed.
    """
    same = layers_b is None
    prepared_a = [_prepare(x) for x in layers_a]
    prepared_b = prepared_a if same else [_prepare(x) for x in layers_b]
    for b in prepared_b:
        _check_pair(prepared_a[0].x.shape[0], b.x.shape[0], debiased)
    self_a = [_hsic(a, a, debiased) for a in prepared_a]
    self_b = self_a if same else [_hsic(b, b, debiased) for b in prepared_b]
    out = np.zeros((len(prepared_a), len(prepared_b)))
    for i, a in enumerate(prepared_a):
        for j, b in enumerate(prepared_b):
            if same and j < i:
                out[i, j] = out[j, i]
            elif same and j == i:
                out[i, j] = 1.0
            else:
                out[i, j] = _cka(a, b, self_a[i], self_b[j], debiased)
        if progress is not None:
            progress(i + 1, len(prepared_a))
    return out


# --------------------------------------------------------------------------------------------------- encoders
def pool_tokens(tokens: torch.Tensor, pooling: str = "grid", grid_size: int = 4) -> torch.Tensor:
    """One image's patch tokens [h, w, D] -> rows [grid_size², D] ("grid") or [1, D] ("mean")."""
    if pooling == "mean":
        return tokens.reshape(-1, tokens.shape[-1]).mean(0, keepdim=True)
    if pooling == "grid":
        pooled = F.adaptive_avg_pool2d(tokens.permute(2, 0, 1)[None].float(), grid_size)  # [1, D, g, g]
        return pooled[0].flatten(1).T  # [g*g, D]
    raise BadRequest(f"pooling must be one of {', '.join(POOLINGS)}, not {pooling!r}")


def layer_representations(encoder: Encoder, images: Sequence[ImageSource], pooling: str = "grid", grid_size: int = 4, batch_size: int = 8,
                          progress: ProgressFn | None = None) -> list[torch.Tensor]:
    """Per block of ``encoder``, the pooled residual stream of every image: a list of [n, D] (see the module docstring)."""
    per_layer: list[list[torch.Tensor]] = [[] for _ in range(encoder.depth)]
    for start in range(0, len(images), batch_size):
        features = encoder.extract(list(images[start:start + batch_size]), layers="all", batch_size=batch_size)
        for f in features:
            for layer in range(encoder.depth):
                per_layer[layer].append(pool_tokens(f.tokens(layer), pooling, grid_size))
        if progress is not None:
            progress(min(start + batch_size, len(images)), len(images))
    return [torch.cat(rows) for rows in per_layer]


@dataclass
class CKAResult:
    matrix: np.ndarray  # [La, Lb]
    model_a: str
    model_b: str
    labels_a: list[str]  # "block 0", ...
    labels_b: list[str]
    samples: int  # rows each representation had
    images: int
    pooling: str
    grid_size: int
    debiased: bool

    def describe(self) -> str:
        how = f"{self.grid_size}x{self.grid_size} pooled grid per image" if self.pooling == "grid" else "mean token per image"
        return (f"{'Debiased' if self.debiased else 'Linear'} CKA between {self.model_a} and {self.model_b}: residual stream "
                f"after each block, {self.images} images, {how} ({self.samples} samples)")


def compare_encoders(encoder_a: Encoder, encoder_b: Encoder, images: Sequence[ImageSource], pooling: str = "grid", grid_size: int = 4,
                     debiased: bool = False, progress: ProgressFn | None = None) -> CKAResult:
    """The layer-by-layer CKA map between two encoders over the same images (one may be the other)."""
    if pooling not in POOLINGS:
        raise BadRequest(f"pooling must be one of {', '.join(POOLINGS)}, not {pooling!r}")
    same = encoder_b is encoder_a
    total = len(images) * (1 if same else 2)

    def stage(offset: int) -> ProgressFn | None:
        return None if progress is None else (lambda done, _n: progress(offset + done, total))

    reps_a = layer_representations(encoder_a, images, pooling, grid_size, progress=stage(0))
    reps_b = reps_a if same else layer_representations(encoder_b, images, pooling, grid_size, progress=stage(len(images)))
    matrix = cka_matrix(reps_a, None if same else reps_b, debiased)
    return CKAResult(matrix, encoder_a.name, encoder_b.name, [f"block {i}" for i in range(encoder_a.depth)],
                     [f"block {i}" for i in range(encoder_b.depth)], int(reps_a[0].shape[0]), len(images), pooling,
                     grid_size, debiased)


__all__ = ["linear_cka", "cka_matrix", "pool_tokens", "layer_representations", "compare_encoders", "CKAResult", "POOLINGS"]
