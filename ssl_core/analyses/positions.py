"""DILEMMA's question on any image: does a model's token know that it was given another patch's position embedding?

Some patch tokens trade position embeddings in a cycle before the blocks (`forward_with_positions`: timm's patch
embedding, the permuted position table, then the blocks; with no swap it is ``model.forward_features``).

* `misplaced_tokens`: final patch tokens of images with a random share of their tokens swapped, which were swapped,
  and which swaps are *visible*. A swap can only be detected when it changes what the token shows: a patch that
  trades positions with one that looks the same (two patches of a flat background) gives the model the input of an
  unswapped image. So a swap counts as visible when the two patches differ by more than `VISIBLE_DIFFERENCE` (mean
  absolute difference, pixels in [0, 1]). The Lab's location probe (`ssl_core.lab.location`) is built on it.
* `fit_position_probe` / `position_probe` (cached): a linear probe of "this token carries a wrong position", fitted
  on random swaps of 10 to 50% of the tokens of some images (their swaps are known), so it serves any share chosen
  later. `position_check`: the patches a user chose trade positions in one image; the probe gives each token's
  P(wrong position), and each token's cosine to its own unswapped token says how much the wrong position changed it.
  When most tokens are misplaced no token can tell (their context is wrong too): keep the share small.

Needs a timm ``VisionTransformer`` with absolute position embeddings (`location_support` says why not otherwise).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ssl_core.analyses.linear_probe import fit_linear_probe, subsample
from ssl_core.data.images import image_fingerprint
from ssl_core.errors import BadRequest
from ssl_core.features.cache import LRUCache
from ssl_core.features.encoder import Encoder
from ssl_core.features.vit_tokens import cycle_positions, forward_with_positions, swap_positions
from ssl_core.progress import ProgressFn

if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline

VISIBLE_DIFFERENCE = 0.02  # mean absolute pixel difference (in [0, 1]) above which a swap changes what a token shows


def location_support(encoder: Encoder) -> str | None:
    """None when tokens of this encoder can be given wrong positions, else why not."""
    from timm.models.vision_transformer import VisionTransformer

    if not isinstance(encoder.model, VisionTransformer):
        return f"{type(encoder.model).__name__} is not a timm VisionTransformer"
    if encoder.model.pos_embed is None:
        return "the model has no absolute position embedding to swap"
    return None


def positions_unsupported(encoder: Encoder) -> str | None:
    """Why this encoder's tokens cannot be given wrong positions (a sentence), or None when they can."""
    reason = location_support(encoder)
    return None if reason is None else f"{encoder.name} cannot be given wrong positions: {reason}"


def visible_swaps(pixels: torch.Tensor, position_ids: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Which tokens show other pixels than the patch whose position they were given.

    pixels: [B, 3, H, W] in [0, 1]; position_ids: [B, L] (token i gets position ``position_ids[i]``) -> [B, L] bool,
    False for every unswapped token.
    """
    patches = F.unfold(pixels, patch_size, stride=patch_size).transpose(1, 2)  # [B, L, 3 * p * p]
    claimed = torch.gather(patches, 1, position_ids.unsqueeze(-1).expand_as(patches))  # [B, L, 3 * p * p]
    return (patches - claimed).abs().mean(-1) > VISIBLE_DIFFERENCE


def tokens_at_positions(encoder: Encoder, batch: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
    """Final patch tokens [B, L, D] (float32, CPU) of same-size processed images ``batch`` [B, 3, H, W]
    (normalised) when token i carries position ``position_ids[b, i]`` [B, L]."""
    grid = (batch.shape[-2] // encoder.patch_size, batch.shape[-1] // encoder.patch_size)
    with encoder.running(grid) as vit:
        tokens = forward_with_positions(vit, batch.to(encoder.device), position_ids)  # [B, P + L, D]
    return tokens[:, encoder.num_prefix_tokens:].float().cpu()


def misplaced_tokens(encoder: Encoder, images: Sequence[Image.Image], ratio: float, generator: torch.Generator,
                     batch_size: int = 32, progress: ProgressFn | None = None,
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Final patch tokens [n, L, D] of same-size processed images with a ``ratio`` of tokens swapped, swapped
    [n, L] bool, and visible [n, L] bool (`visible_swaps`: the swapped tokens whose pixels differ from their claimed
    position's).

    The swaps are drawn image by image from ``generator``, so they do not depend on ``batch_size``.
    """
    out_tokens, out_swapped, out_visible = [], [], []
    for start in range(0, len(images), batch_size):
        batch = torch.stack([encoder.to_tensor(image) for image in images[start:start + batch_size]])  # [B, 3, H, W]
        num_patches = (batch.shape[-2] // encoder.patch_size) * (batch.shape[-1] // encoder.patch_size)
        swaps = [swap_positions(num_patches, ratio, generator) for _ in range(batch.shape[0])]
        position_ids = torch.stack([ids for ids, _ in swaps])  # [B, L]
        out_tokens.append(tokens_at_positions(encoder, batch, position_ids))
        out_swapped.append(torch.stack([swapped for _, swapped in swaps]))
        pixels = batch * encoder.std + encoder.mean  # [B, 3, H, W] back in [0, 1]
        out_visible.append(visible_swaps(pixels, position_ids, encoder.patch_size))
        if progress is not None:
            progress(min(start + batch_size, len(images)), len(images))
    return torch.cat(out_tokens), torch.cat(out_swapped), torch.cat(out_visible)


FIT_SHARES = (0.1, 0.2, 0.3, 0.5)  # one random swap per share and image: the probe serves any share chosen later


@dataclass
class PositionProbe:
    """A linear probe of "this token carries another patch's position" for one model's final tokens."""

    probe: Pipeline
    model_key: str  # the model whose tokens it was fitted on, and their resolution (`probe_key`)
    images: int  # images it was fitted on
    shares: tuple[float, ...]  # the shares of each image's tokens swapped, one random swap each
    tokens: int  # tokens it was fitted on
    seed: int


def probe_key(encoder: Encoder) -> str:
    """The model (`Encoder.key`) and the resolution it sees images at: a probe serves tokens of both alike only."""
    return f"{encoder.key} at {encoder.spec.image_size} px"


def fit_position_probe(encoder: Encoder, images: Sequence[Image.Image], shares: Sequence[float] = FIT_SHARES,
                       seed: int = 0, max_tokens: int = 6000, max_iter: int = 2000,
                       progress: ProgressFn | None = None) -> PositionProbe:
    """Fit the probe on one random swap of each share in each of ``images`` (their swaps known; at most
    ``max_tokens`` tokens, drawn with ``seed``)."""
    unsupported = positions_unsupported(encoder)
    if unsupported:
        raise BadRequest(unsupported)
    if not images:
        raise BadRequest("the position probe needs at least one image to fit on")
    generator = torch.Generator().manual_seed(seed)
    x, y = [], []
    for done, image in enumerate(images):
        processed = encoder.prepare(image)
        for share in shares:
            tokens, swapped, _ = misplaced_tokens(encoder, [processed], share, generator)  # [1, L, D], [1, L]
            x.append(tokens[0])
            y.append(swapped[0])
        if progress is not None:
            progress(done + 1, len(images))
    x_all, y_all = torch.cat(x).numpy(), torch.cat(y).numpy()  # [n * shares * L, D], [n * shares * L]
    keep = subsample(len(y_all), max_tokens, seed)
    return PositionProbe(fit_linear_probe(x_all[keep], y_all[keep], seed, max_iter), probe_key(encoder),
                         len(images), tuple(shares), len(keep), seed)


PROBES: LRUCache[PositionProbe] = LRUCache(16)  # fitted probes by model and images: a new swap costs two forwards


def position_probe(encoder: Encoder, images: Sequence[Image.Image], seed: int = 0,
                   progress: ProgressFn | None = None) -> PositionProbe:
    """`fit_position_probe` with the default shares, kept in `PROBES` by model, images (their pixels) and seed."""
    key = (probe_key(encoder), tuple(image_fingerprint(image.convert("RGB")) for image in images), seed)
    probe = PROBES.get(key)
    if probe is None:
        probe = fit_position_probe(encoder, images, seed=seed, progress=progress)
        PROBES.put(key, probe)
    return probe


@dataclass
class PositionCheck:
    """Per patch of one image whose chosen patches trade positions: does each token know it is misplaced?"""

    probability: np.ndarray  # [h, w] the probe's P(wrong position) per token
    swapped: np.ndarray  # [h, w] bool, the tokens given another patch's position
    visible: np.ndarray  # [h, w] bool, the swapped tokens whose pixels differ from their claimed position's
    cosine: np.ndarray  # [h, w] cos(token with the swaps, token without): 1 where the wrong position changed nothing
    auc: float | None  # ROC AUC of ``probability`` against ``swapped`` (None unless both kinds are present)
    probe: PositionProbe

    @property
    def mean_cosine(self) -> tuple[float, float]:
        """Mean ``cosine`` of the swapped tokens and of the others."""
        return float(self.cosine[self.swapped].mean()), float(self.cosine[~self.swapped].mean())


def position_check(encoder: Encoder, image: Image.Image, swapped: np.ndarray, probe: PositionProbe) -> PositionCheck:
    """The tokens of ``image`` marked in ``swapped`` [h, w] bool (the encoder's grid for it, two or more) trade
    positions in a cycle (grid order); ``probe`` (fitted on this encoder's tokens) gives each P(wrong position)."""
    if probe.model_key != probe_key(encoder):
        raise BadRequest(f"the position probe was fitted on other tokens ({probe.model_key}) than these "
                         f"({probe_key(encoder)})")
    processed = encoder.prepare(image)
    grid = (processed.size[1] // encoder.patch_size, processed.size[0] // encoder.patch_size)
    swapped = np.asarray(swapped, dtype=bool)
    if swapped.shape != grid:
        raise BadRequest(f"the swap mask is {swapped.shape[0]}x{swapped.shape[1]} patches; {encoder.name} sees this "
                         f"image as {grid[0]}x{grid[1]} patches")
    if swapped.sum() < 2:
        raise BadRequest("choose at least two patches to trade positions")
    batch = encoder.to_tensor(processed)[None]  # [1, 3, H, W]
    chosen = torch.from_numpy(swapped.reshape(-1)).nonzero().flatten()  # [K]
    position_ids = torch.stack([torch.arange(swapped.size), cycle_positions(chosen, swapped.size)])  # [2, L]
    own, moved = tokens_at_positions(encoder, batch.expand(2, -1, -1, -1), position_ids)  # [L, D] each
    probability = probe.probe.predict_proba(moved.numpy().astype(np.float64))[:, 1]  # [L]
    visible = visible_swaps(batch * encoder.std + encoder.mean, position_ids[1:], encoder.patch_size)[0]  # [L]
    return PositionCheck(probability.reshape(grid).astype(np.float32), swapped, visible.numpy().reshape(grid),
                         F.cosine_similarity(moved, own, dim=-1).numpy().reshape(grid), roc_auc(probability, swapped),
                         probe)


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """ROC AUC of ``scores`` [n] for ``labels`` [n] bool; None unless both labels are present."""
    from sklearn.metrics import roc_auc_score

    labels = np.asarray(labels, dtype=bool).reshape(-1)
    return float(roc_auc_score(labels, np.asarray(scores).reshape(-1))) if 0 < labels.sum() < labels.size else None


__all__ = ["VISIBLE_DIFFERENCE", "FIT_SHARES", "location_support", "positions_unsupported", "visible_swaps", "tokens_at_positions",
           "misplaced_tokens", "PositionProbe", "probe_key", "fit_position_probe", "position_probe", "PositionCheck",
           "position_check", "roc_auc"]
