"""DINO (Caron et al. 2021): self-distillation with no labels, between a student and its EMA teacher.

Multi-crop: two global crops (40-100% of the area, at the training size) and ``num_local`` local crops (8-40%,
at half the size; the encoder takes them through timm's ``dynamic_img_size``). The teacher sees the global
crops, the student all crops; the loss is the cross-entropy between the teacher's centred, sharpened softmax
(temperature 0.04) and the student's (0.1) over every pair of different views. The centre is an EMA (0.9) of
the teacher's outputs. The head is DINO's: a 3-layer MLP to a 128-d bottleneck, L2 normalisation, then a
weight-normalised linear layer (norm fixed to 1) to ``out_dim`` prototypes.

Teacher momentum policy: a cosine ramp from ``m0`` to 1, with ``m0 = 1 - 20 / steps`` clipped to [0.95, 0.996]:
DINO's 0.996 assumes >100k steps, and at a few hundred steps the teacher would barely leave its initialisation;
0.95 (a window of about 20 steps) keeps it from becoming a copy of the student, which DINO reports fails. The saved encoder is the teacher's, as DINO evaluates it.

Logged beside the loss, to see collapse: ``spread`` of the student's class tokens (`common.embedding_spread`:
about 1 when spread out, 0 when all alike), ``teacher_entropy`` (how sharp each teacher output is) and
``teacher_usage`` (normalised entropy of the batch-mean teacher output: 0 when every image picks one prototype).
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from ssl_core.train.common import (
    Objective,
    StepOutput,
    TrainConfig,
    build_encoder,
    color_jitter,
    cosine_ramp,
    embedding_spread,
    normalize,
    random_resized_crop,
    to_unit,
)


def normalized_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Entropy of distributions [..., K] divided by log K: 0 for one-hot, 1 for uniform."""
    return -(probs * probs.clamp_min(1e-12).log()).sum(-1) / math.log(probs.shape[-1])


class DINOHead(nn.Module):
    """MLP -> L2-normalised bottleneck -> weight-normalised prototypes. [N, D] -> [N, out_dim] logits."""

    def __init__(self, in_dim: int, out_dim: int = 1024, hidden_dim: int = 512, bottleneck_dim: int = 128):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, hidden_dim), nn.GELU(),
                                 nn.Linear(hidden_dim, bottleneck_dim))
        self.prototypes = nn.Parameter(torch.empty(out_dim, bottleneck_dim))
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        nn.init.trunc_normal_(self.prototypes, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [N, D] -> logits [N, out_dim]"""
        x = F.normalize(self.mlp(x), dim=-1)  # [N, bottleneck]
        return F.linear(x, F.normalize(self.prototypes, dim=-1))


class DINOLoss(nn.Module):
    """Cross-entropy between centred, sharpened teacher outputs and student outputs over different views."""

    def __init__(self, out_dim: int, student_temp: float = 0.1, teacher_temp: float = 0.04, center_momentum: float = 0.9):
        super().__init__()
        self.student_temp, self.teacher_temp, self.center_momentum = student_temp, teacher_temp, center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    def forward(self, student: list[torch.Tensor], teacher: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """student: views [B, K] (teacher's views first); teacher: global views [B, K] -> (loss, teacher probs)."""
        teacher_cat = torch.cat(teacher).float()
        probs = F.softmax((teacher_cat - self.center) / self.teacher_temp, dim=-1).detach()
        targets = probs.chunk(len(teacher))
        total, pairs = 0.0, 0
        for t_index, target in enumerate(targets):
            for s_index, view in enumerate(student):
                if s_index == t_index:
                    continue
                total = total + torch.sum(-target * F.log_softmax(view.float() / self.student_temp, dim=-1), dim=-1).mean()
                pairs += 1
        self.update_center(teacher_cat)
        return total / pairs, probs

    @torch.no_grad()
    def update_center(self, teacher_output: torch.Tensor) -> None:
        self.center.mul_(self.center_momentum).add_(teacher_output.mean(0, keepdim=True), alpha=1 - self.center_momentum)


class DINOObjective(Objective):
    """DINO self-distillation with multi-crop, EMA teacher, centring and sharpening"""

    method = "dino"
    default_lr = 5e-4

    def __init__(self, config: TrainConfig, num_local: int = 4, out_dim: int = 1024):
        super().__init__()
        self.image_size = config.image_size
        self.local_size = max(config.image_size // 2, 16)
        self.num_local = num_local
        self.student = build_encoder(config)
        self.student_head = DINOHead(self.student.embed_dim, out_dim)
        self.teacher = copy.deepcopy(self.student).requires_grad_(False)
        self.teacher_head = copy.deepcopy(self.student_head).requires_grad_(False)
        self.loss_fn = DINOLoss(out_dim)
        self.momentum_start = min(0.996, max(0.95, 1 - 20 / config.steps))

    def train(self, mode: bool = True) -> "DINOObjective":
        super().train(mode)
        self.teacher.eval()
        self.teacher_head.eval()
        return self

    def views(self, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(global crops [B, 3, S, S] x 2, local crops [B, 3, S/2, S/2] x num_local), normalised."""
        x = to_unit(images)
        global_views = [normalize(color_jitter(random_resized_crop(x, self.image_size, (0.4, 1.0)))) for _ in range(2)]
        local_views = [normalize(color_jitter(random_resized_crop(x, self.local_size, (0.08, 0.4))))
                       for _ in range(self.num_local)]
        return global_views, local_views

    def student_globals(self, global_views: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        """Student class tokens of the global views [2B, D], an extra loss (none for DINO), extra metrics."""
        return self.student(torch.cat(global_views)), torch.zeros((), device=global_views[0].device), {}

    def forward(self, images: torch.Tensor, labels: torch.Tensor, step: int, total: int) -> StepOutput:
        global_views, local_views = self.views(images)
        embeddings, extra_loss, metrics = self.student_globals(global_views)
        student_out = list(self.student_head(embeddings).chunk(len(global_views)))
        if local_views:
            student_out += list(self.student_head(self.student(torch.cat(local_views))).chunk(len(local_views)))
        with torch.no_grad():
            teacher_out = self.teacher_head(self.teacher(torch.cat(global_views))).chunk(len(global_views))
        dino_loss, probs = self.loss_fn(student_out, list(teacher_out))
        metrics = {"dino_loss": float(dino_loss.detach()), "spread": embedding_spread(embeddings),
                   "teacher_entropy": float(normalized_entropy(probs).mean()),
                   "teacher_usage": float(normalized_entropy(probs.mean(0))), **metrics}
        return StepOutput(dino_loss + extra_loss, metrics)

    @torch.no_grad()
    def after_step(self, step: int, total: int) -> None:
        m = cosine_ramp(step, total, self.momentum_start, 1.0)
        for student, teacher in ((self.student, self.teacher), (self.student_head, self.teacher_head)):
            for ps, pt in zip(student.parameters(), teacher.parameters()):
                pt.mul_(m).add_(ps.detach(), alpha=1 - m)

    def export(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        return self.teacher.state_dict(), {"exported": "teacher"}
