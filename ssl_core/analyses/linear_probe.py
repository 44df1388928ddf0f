"""A linear probe: scikit-learn ``LogisticRegression`` (lbfgs, C = 1) on standardised features.

The Lab's object, part and location probes and the wrong-positions map (`ssl_core.analyses.positions`) fit it, on
training sets of at most so many samples (`subsample`).
Fits run with one BLAS thread: on a busy 2-core machine OpenBLAS's waiting threads made them ten times slower.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ssl_core.errors import BadRequest

if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline


def fit_linear_probe(x: np.ndarray, y: np.ndarray, seed: int, max_iter: int) -> Pipeline:
    """A standardise + logistic-regression pipeline fitted on x [n, D], y [n]."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    if len(np.unique(y)) < 2:
        raise BadRequest("a linear probe needs at least two classes in its training labels")
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter, random_state=seed))
    with threadpool_limits(limits=1, user_api="blas"):
        return probe.fit(np.asarray(x, np.float64), np.asarray(y))


def subsample(n: int, limit: int, seed: int) -> np.ndarray:
    """Sorted indices of at most ``limit`` of n items, drawn with the seed (all of them when n <= limit)."""
    if n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))


__all__ = ["fit_linear_probe", "subsample"]
