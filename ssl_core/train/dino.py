"""DINO (Caron et al. 2021): self-distillation with no labels, between a student and its EMA teacher.

Multi-crop: two global crops (50-100% of the area, at the training size) and ``num_local`` local crops (15-50%,
at half the size; the encoder takes them through timm's ``dynamic_img_size``). The teacher sees the global
crops, the student all crops; the loss is the cross-entropy between the teacher's centred, sharpened targets
(temperature 0.04) and the student's softmax (0.1) over every pair of different views. The head is DINO's: a 3-layer
MLP to a 128-d bottleneck, L2 normalisation, then a weight-normalised linear layer (norm fixed to 1) to
``out_dim`` prototypes. Every setting is a `DINORecipe` field.

The recipe, and where it departs from the paper's (``main_dino.py``) for short runs on the parts world; each change
was measured (docs/benchmarks.md, "DINO recipe"):

* centring by Sinkhorn-Knopp (DINOv2, 3 iterations: `sinkhorn_knopp`) instead of DINO's EMA centre (``centering=
  "ema"`` keeps it): with the EMA centre, short runs first sharpen onto a few prototypes, then the centring wins and
  the teacher turns near-uniform (normalised entropy 0.99); Sinkhorn-Knopp spreads every batch over the prototypes
  and keeps each target sharp (entropy about 0.7, usage 1.0);
* KoLeo (DINOv2, weight 0.1: `koleo_loss`) on the student's class tokens of each global view: it pushes each
  image away from its nearest neighbour in the batch. Sinkhorn-Knopp alone stops the collapse but, like the EMA
  centre, learns the cue two crops of a scene share most, their background (k-NN at its initialisation's level);
  with KoLeo the class token beats the untrained baseline on k-NN after 150 CPU steps;
* prototypes frozen (no gradient) for the first 10% of the steps, as the paper's first epoch
  (``freeze_last_layer``), which it advises raising when the loss does not fall;
* 256 prototypes (the paper: 65536 for ImageNet; a batch of 32-256 cannot use thousands), larger crops
  (global 50-100%, local 15-50%: half-size local crops of a 48-96 px image are small) and a milder colour jitter
  without grayscale (object colours are typical of their class here, as shapes are);
* position embeddings that start from MAE's 2D sin-cos table and train from there (``sincos_positions``; MoCo v3
  also uses the table), not timm's random ones (std 0.02): after 200 CPU steps at 96 px the class token's k-NN
  accuracy is 0.385 against 0.287 (object probe 0.478 against 0.414);
* teacher temperature 0.04 throughout (``teacher_temp_warmup`` keeps the paper's warm-up as an option);
* teacher momentum: a cosine ramp from ``m0`` to 1, with ``m0 = 1 - 20 / steps`` (steps of the run as planned,
  after a time budget shortened it) clipped to [0.95, 0.996]: DINO's 0.996 assumes >100k steps, and at a few hundred
  steps the teacher would barely leave its initialisation; 0.95 (a window of about 20 steps) keeps it from becoming
  a copy of the student, which DINO reports fails. The saved encoder is the teacher's, as DINO evaluates it.

Logged beside the loss, to see collapse: ``spread`` of the student's class tokens (`common.embedding_spread`:
about 1 when spread out, 0 when all alike), ``teacher_entropy`` (how sharp each teacher target is: near 1 when the
teacher is uniform, one way to collapse), ``teacher_usage`` (normalised entropy of the batch-mean target: 0 when
every image picks one prototype, the other way), ``prototypes_used`` (fraction of the prototypes that are some
image's top target in the batch; at most 2B / out_dim) and ``koleo`` when it is on.
"""
from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ssl_core.errors import BadRequest
from ssl_core.features.vit_tokens import set_sincos_positions
from ssl_core.train.common import (
    Batch,
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

    def forward(self, x: torch.Tensor, freeze_prototypes: bool = False) -> torch.Tensor:
        """x: [N, D] -> logits [N, out_dim]; ``freeze_prototypes``: no gradient reaches the prototypes."""
        x = F.normalize(self.mlp(x), dim=-1)  # [N, bottleneck]
        prototypes = self.prototypes.detach() if freeze_prototypes else self.prototypes
        return F.linear(x, F.normalize(prototypes, dim=-1))


@torch.no_grad()
def sinkhorn_knopp(logits: torch.Tensor, temp: float, iterations: int = 3) -> torch.Tensor:
    """DINOv2's teacher centring: [B, K] logits -> [B, K] assignments whose rows sum to 1 and whose columns (the
    prototypes) each get about B / K of the batch, by alternately normalising exp(logits / temp) over prototypes
    and over images (Sinkhorn-Knopp, ``iterations`` rounds)."""
    q = torch.exp((logits.float() - logits.float().max()) / temp)  # [B, K]; the shift cancels in the normalisations
    q = q / q.sum()
    batch, prototypes = q.shape
    for _ in range(iterations):
        q = q / (q.sum(0, keepdim=True) * prototypes)  # each prototype: total weight 1 / K
        q = q / (q.sum(1, keepdim=True) * batch)  # each image: total weight 1 / B
    return q * batch


def koleo_loss(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Kozachenko-Leonenko entropy regulariser (Sablayrolles et al. 2019; DINOv2): -mean log distance of each
    L2-normalised row of x [B, D] to its nearest other row. Low when the batch spreads out over the sphere."""
    x = F.normalize(x.float(), dim=-1, eps=eps)
    dots = x @ x.t()  # [B, B]
    dots.fill_diagonal_(-1.0)
    nearest = dots.argmax(1)  # [B]
    return -torch.log(F.pairwise_distance(x, x[nearest], eps=eps) + eps).mean()


class DINOLoss(nn.Module):
    """Cross-entropy between centred, sharpened teacher outputs and student outputs over different views.

    ``centering``: "ema" (DINO: subtract an EMA of the teacher's outputs, then softmax) or "sinkhorn" (DINOv2:
    Sinkhorn-Knopp over the batch, which spreads the batch over the prototypes at every step)."""

    def __init__(self, out_dim: int, student_temp: float = 0.1, teacher_temp: float = 0.04, center_momentum: float = 0.9,
                 centering: str = "ema"):
        super().__init__()
        if centering not in ("ema", "sinkhorn"):
            raise BadRequest(f"unknown DINO centering '{centering}' (choose from ema, sinkhorn)")
        self.student_temp, self.teacher_temp, self.center_momentum = student_temp, teacher_temp, center_momentum
        self.centering = centering
        self.register_buffer("center", torch.zeros(1, out_dim))

    def forward(self, student: list[torch.Tensor], teacher: list[torch.Tensor], teacher_temp: float | None = None,
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """student: views [B, K] (teacher's views first); teacher: global views [B, K] -> (loss, teacher probs)."""
        teacher_cat = torch.cat(teacher).float()
        temp = self.teacher_temp if teacher_temp is None else teacher_temp
        if self.centering == "sinkhorn":
            probs = sinkhorn_knopp(teacher_cat, temp)
        else:
            probs = F.softmax((teacher_cat - self.center) / temp, dim=-1).detach()
        targets = probs.chunk(len(teacher))
        total, pairs = 0.0, 0
        for t_index, target in enumerate(targets):
            for s_index, view in enumerate(student):
                if s_index == t_index:
                    continue
                total = total + torch.sum(-target * F.log_softmax(view.float() / self.student_temp, dim=-1), dim=-1).mean()
                pairs += 1
        if self.centering == "ema":  # Sinkhorn-Knopp centres each batch itself: no running centre
            self.update_center(teacher_cat)
        return total / pairs, probs

    @torch.no_grad()
    def update_center(self, teacher_output: torch.Tensor) -> None:
        self.center.mul_(self.center_momentum).add_(teacher_output.mean(0, keepdim=True), alpha=1 - self.center_momentum)


@dataclass
class DINORecipe:
    """DINO's settings (see the module docstring for why each differs from the paper's, where it does)."""

    out_dim: int = 256  # prototypes
    num_local: int = 4  # local crops per image
    global_scale: tuple[float, float] = (0.5, 1.0)  # area fraction of the global crops
    local_scale: tuple[float, float] = (0.15, 0.5)  # ... of the local crops (at half the training size)
    jitter: float = 0.5  # colour jitter strength: brightness and contrast +-0.4x, saturation +-0.2x (no hue)
    gray_p: float = 0.0  # probability of a grayscale view
    student_temp: float = 0.1
    teacher_temp: float = 0.04  # after the warm-up
    teacher_temp_start: float = 0.04  # linear warm-up from this ...
    teacher_temp_warmup: float = 0.0  # ... over this fraction of the steps
    center_momentum: float = 0.9  # of the EMA centre ("ema" centring)
    centering: str = "sinkhorn"  # "sinkhorn" (DINOv2's Sinkhorn-Knopp, 3 iterations) or "ema" (DINO)
    koleo_weight: float = 0.1  # weight of the KoLeo regulariser on the student's global class tokens (DINOv2's)
    momentum_start: float | None = None  # teacher EMA at step 0 (cosine to 1); None: the short-run policy
    freeze_prototypes: float = 0.1  # fraction of the steps during which the prototypes get no gradient
    sincos_positions: bool = True  # position embeddings start from MAE's 2D sin-cos table (then train), not timm's

    def teacher_momentum_start(self, steps: int) -> float:
        if self.momentum_start is not None:
            return self.momentum_start
        return min(0.996, max(0.95, 1 - 20 / steps))

    def teacher_temp_at(self, step: int, total: int) -> float:
        warmup = self.teacher_temp_warmup * total
        if step >= warmup:
            return self.teacher_temp
        return self.teacher_temp_start + (self.teacher_temp - self.teacher_temp_start) * step / warmup


class DINOObjective(Objective):
    """DINO self-distillation with multi-crop, EMA teacher, centring and sharpening"""

    method = "dino"
    default_lr = 5e-4

    def __init__(self, config: TrainConfig, recipe: DINORecipe | None = None):
        super().__init__()
        self.recipe = recipe = recipe or DINORecipe()
        self.image_size = config.image_size
        self.local_size = max(config.image_size // 2, 16)
        self.num_local = recipe.num_local
        self.student = build_encoder(config)
        if recipe.sincos_positions:  # the teacher copies the student: both start alike
            set_sincos_positions(self.student)
        self.student_head = DINOHead(self.student.embed_dim, recipe.out_dim)
        self.teacher = copy.deepcopy(self.student).requires_grad_(False)
        self.teacher_head = copy.deepcopy(self.student_head).requires_grad_(False)
        self.loss_fn = DINOLoss(recipe.out_dim, recipe.student_temp, recipe.teacher_temp, recipe.center_momentum,
                                recipe.centering)

    def train(self, mode: bool = True) -> "DINOObjective":
        super().train(mode)
        self.teacher.eval()
        self.teacher_head.eval()
        return self

    def views(self, batch: Batch) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(global crops [B, 3, S, S] x 2, local crops [B, 3, S/2, S/2] x num_local), normalised."""
        x, r = to_unit(batch.images), self.recipe

        def view(size: int, scale: tuple[float, float]) -> torch.Tensor:
            crop = color_jitter(random_resized_crop(x, size, scale), 0.4 * r.jitter, 0.4 * r.jitter,
                                0.2 * r.jitter, p_gray=r.gray_p)
            return normalize(crop)

        global_views = [view(self.image_size, r.global_scale) for _ in range(2)]
        local_views = [view(self.local_size, r.local_scale) for _ in range(self.num_local)]
        return global_views, local_views

    def student_globals(self, global_views: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        """Student class tokens of the global views [2B, D], an extra loss (none for DINO), extra metrics."""
        return self.student(torch.cat(global_views)), torch.zeros((), device=global_views[0].device), {}

    def forward(self, batch: Batch, step: int, total: int) -> StepOutput:
        global_views, local_views = self.views(batch)
        embeddings, extra_loss, metrics = self.student_globals(global_views)
        frozen = step < self.recipe.freeze_prototypes * total
        student_out = list(self.student_head(embeddings, frozen).chunk(len(global_views)))
        if local_views:
            student_out += list(self.student_head(self.student(torch.cat(local_views)), frozen).chunk(len(local_views)))
        with torch.no_grad():
            teacher_out = self.teacher_head(self.teacher(torch.cat(global_views))).chunk(len(global_views))
        teacher_temp = self.recipe.teacher_temp_at(step, total)
        dino_loss, probs = self.loss_fn(student_out, list(teacher_out), teacher_temp)
        if self.recipe.koleo_weight:  # DINOv2: per global view, summed
            koleo = sum(koleo_loss(view) for view in embeddings.chunk(len(global_views)))
            extra_loss = extra_loss + self.recipe.koleo_weight * koleo
            metrics = metrics | {"koleo": float(koleo.detach())}
        metrics = {"dino_loss": float(dino_loss.detach()), "spread": embedding_spread(embeddings),
                   "teacher_entropy": float(normalized_entropy(probs).mean()),
                   "teacher_usage": float(normalized_entropy(probs.mean(0))),
                   "prototypes_used": probs.argmax(1).unique().numel() / probs.shape[1], **metrics}
        return StepOutput(dino_loss + extra_loss, metrics)

    @torch.no_grad()
    def after_step(self, step: int, total: int) -> None:
        m = cosine_ramp(step, total, self.recipe.teacher_momentum_start(total), 1.0)
        for student, teacher in ((self.student, self.teacher), (self.student_head, self.teacher_head)):
            for ps, pt in zip(student.parameters(), teacher.parameters()):
                pt.mul_(m).add_(ps.detach(), alpha=1 - m)

    def export(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        return self.teacher.state_dict(), {"exported": "teacher"}

    def settings(self, total: int) -> dict[str, object]:
        return asdict(self.recipe) | {"momentum_start": self.recipe.teacher_momentum_start(total)}
