"""DILEMMA (Sameni et al. 2023): DINO plus detecting tokens that carry a wrong position embedding, on sparse inputs.

The student's global crops are corrupted before its blocks: only a random ``keep_ratio`` of the patch tokens is
kept (sparse input, which also makes the step cheaper), and a ``swap_ratio`` of the kept tokens trade position
embeddings in a cycle (each gets another kept token's). A linear head on each output patch token predicts
whether its position is wrong (binary cross-entropy, positives weighted so both classes count equally). The
DINO loss (`ssl_core.train.dino`) is unchanged: the teacher sees the clean, full global crops, and the student's
class tokens of the corrupted crops must match them. Loss = DINO + ``location_weight`` x detection.

Saved: the teacher's encoder (as DINO) plus ``location_head.weight`` / ``location_head.bias`` (trained on the
student's tokens; `load_encoder` ignores them).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed
from torch import nn

from ssl_core.mim.mae import embed_patches, encode_tokens
from ssl_core.train.common import TrainConfig
from ssl_core.train.dino import DINOObjective


def patch_position_table(vit: nn.Module, grid_hw: tuple[int, int]) -> torch.Tensor:
    """The patch position embeddings [1, h*w, D] of a timm ViT for a grid (resampled as timm does)."""
    embedded_prefix = 0 if vit.no_embed_class else vit.num_prefix_tokens
    pos = vit.pos_embed
    if tuple(grid_hw) != tuple(vit.patch_embed.grid_size):
        pos = resample_abs_pos_embed(pos, new_size=list(grid_hw), old_size=vit.patch_embed.grid_size,
                                     num_prefix_tokens=embedded_prefix)
    return pos[:, embedded_prefix:]


def misplace_tokens(tokens: torch.Tensor, positions: torch.Tensor, keep_ratio: float, swap_ratio: float,
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep a random subset of tokens; some of them trade position embeddings in a cycle.

    tokens: [N, L, D] with their own position embeddings added; positions: [1, L, D].
    Returns kept tokens [N, K, D] (in random order) and swapped [N, K] float (1 = wrong position).
    """
    N, L, D = tokens.shape
    K = max(2, round(L * keep_ratio))
    S = min(K, max(2, round(K * swap_ratio)))
    ids_keep = torch.argsort(torch.rand(N, L, device=tokens.device), dim=1)[:, :K]  # a random subset, random order
    ids_position = ids_keep.clone()
    ids_position[:, :S] = ids_keep[:, :S].roll(1, dims=1)  # the first S take their neighbour's position

    def gather(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return torch.gather(x.expand(N, -1, -1), 1, ids.unsqueeze(-1).expand(-1, -1, D))

    kept = gather(tokens, ids_keep) - gather(positions, ids_keep) + gather(positions, ids_position)
    swapped = torch.zeros(N, K, device=tokens.device)
    swapped[:, :S] = 1.0
    return kept, swapped


class DILEMMAObjective(DINOObjective):
    """DINO + detection of tokens with incorrect location embeddings, on sparse student inputs"""

    method = "dilemma"

    def __init__(self, config: TrainConfig, keep_ratio: float = 0.5, swap_ratio: float = 0.15,
                 location_weight: float = 1.0):
        super().__init__(config)
        self.keep_ratio, self.swap_ratio, self.location_weight = keep_ratio, swap_ratio, location_weight
        self.location_head = nn.Linear(self.student.embed_dim, 1)

    def student_globals(self, global_views: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        tokens, prefix, grid = embed_patches(self.student, torch.cat(global_views))  # tokens: [N, L, D]
        kept, swapped = misplace_tokens(tokens, patch_position_table(self.student, grid), self.keep_ratio, self.swap_ratio)
        out = encode_tokens(self.student, prefix, kept)  # [N, P+K, D]
        logits = self.location_head(out[:, prefix.shape[1]:]).squeeze(-1).float()  # [N, K]
        positives = swapped.mean()
        loss = F.binary_cross_entropy_with_logits(logits, swapped, pos_weight=(1 - positives) / positives)
        predicted = logits > 0
        balanced = 0.5 * (predicted[swapped > 0].float().mean() + (~predicted[swapped == 0]).float().mean())
        metrics = {"location_loss": float(loss.detach()), "location_balanced_acc": float(balanced)}
        return self.student.forward_head(out, pre_logits=True), self.location_weight * loss, metrics

    def export(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        state, metadata = super().export()
        head = {f"location_head.{k}": v for k, v in self.location_head.state_dict().items()}
        return state | head, metadata
