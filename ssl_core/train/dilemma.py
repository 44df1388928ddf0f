"""DILEMMA (Sameni et al. 2023): DINO plus detecting tokens that carry a wrong position embedding, on sparse inputs.

The student's global crops are corrupted before its blocks: only a random ``keep_ratio`` of the patch tokens is
kept (sparse input, which also makes the step cheaper), and a ``swap_ratio`` of the kept tokens trade position
embeddings in a cycle (each gets another kept token's). A linear head on each output patch token predicts
whether its position is wrong (binary cross-entropy, positives weighted so both classes count equally). The
DINO loss (`ssl_core.train.dino`) is unchanged: the teacher sees the clean, full global crops, and the student's
class tokens of the corrupted crops must match them. Loss = DINO + ``location_weight`` x detection.

The position embeddings start from the 2D sin-cos table (MAE's, `vit_tokens.set_sincos_positions`) and train from
there (``sincos_positions``). From timm's random init (std 0.02) the detection head stayed at chance for hundreds of
CPU steps: its balanced accuracy was 0.50 at step 150 and 0.56 after 600 (the bundled file of the first zoo), and a
detection-only run on full inputs was still at chance after 300 steps; from sin-cos it reached 0.57 by step 150
(docs/benchmarks.md, "DILEMMA: where the position embeddings start").

Saved: the teacher's encoder (as DINO) plus ``location_head.weight`` / ``location_head.bias`` (trained on the
student's tokens; `load_encoder` ignores them).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ssl_core.features.vit_tokens import embed_patches, encode_tokens, misplace_tokens, patch_position_table
from ssl_core.train.common import TrainConfig
from ssl_core.train.dino import DINOObjective, DINORecipe


class DILEMMAObjective(DINOObjective):
    """DINO + detection of tokens with incorrect location embeddings, on sparse student inputs"""

    method = "dilemma"

    def __init__(self, config: TrainConfig, keep_ratio: float = 0.5, swap_ratio: float = 0.15,
                 location_weight: float = 1.0, sincos_positions: bool = True):
        super().__init__(config, DINORecipe(sincos_positions=sincos_positions))  # both stay trainable / EMA-updated
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

    def settings(self, total: int) -> dict[str, object]:
        return super().settings(total) | {"keep_ratio": self.keep_ratio, "swap_ratio": self.swap_ratio,
                                          "location_weight": self.location_weight}

    def export(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        state, metadata = super().export()
        head = {f"location_head.{k}": v for k, v in self.location_head.state_dict().items()}
        return state | head, metadata
