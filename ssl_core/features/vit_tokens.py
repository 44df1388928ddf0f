"""Token operations on a timm ViT that every model-side feature reuses (as Lightly's masked ViT wrapper does).

`embed_patches` runs the patch embedding and adds position embeddings (resampled to the grid by
`patch_position_table`); `random_masking` keeps a subset of tokens; `encode_tokens` runs the blocks over the
prefix and any subset of patch tokens; `encode_visible` chains them. `forward_with_positions`, `cycle_positions`,
`swap_positions` and `misplace_tokens` give tokens another patch's position embedding (DILEMMA's corruption, the
Lab's probe of it and the app's wrong-positions map). MAE, CAE, context drift, DILEMMA training and the Lab all go
through these, so a model family is wired once here.
"""
from __future__ import annotations

import torch
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer

from ssl_core.errors import BadRequest


def random_masking(x: torch.Tensor, mask_ratio: float, mask: torch.Tensor | None = None,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keep a subset of patch tokens, by per-sample random shuffling (or by a given mask).

    x: [N, L, D]; mask: optional [N, L] (bool or 0/1, 1 = hidden) with the same hidden count in every row.
    Returns x_kept [N, K, D], mask [N, L] float (0 keep, 1 remove), ids_restore [N, L].
    """
    N, L, D = x.shape
    if mask is None:
        len_keep = int(L * (1 - mask_ratio))
        noise = torch.rand(N, L, device=x.device, generator=generator)  # noise in [0, 1]
        ids_shuffle = torch.argsort(noise, dim=1)  # ascend: small is keep, large is remove
    else:
        mask = check_mask(mask, N, L).to(x.device)
        len_keep = L - int(mask[0].sum())
        ids_shuffle = torch.argsort(mask.to(torch.int8), dim=1, stable=True)  # visible first, in patch order
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :len_keep]
    x_kept = torch.gather(x, dim=1, index=ids_keep.unsqueeze(-1).repeat(1, 1, D))
    binary = torch.ones(N, L, device=x.device)
    binary[:, :len_keep] = 0
    binary = torch.gather(binary, dim=1, index=ids_restore)  # unshuffle: the binary mask in patch order
    return x_kept, binary, ids_restore


def check_mask(mask: torch.Tensor, batch: int, num_patches: int) -> torch.Tensor:
    """A user mask as bool [N, L], or ValueError saying what is wrong with it."""
    mask = torch.as_tensor(mask)
    if mask.ndim == 1:
        mask = mask.unsqueeze(0).expand(batch, -1)
    if tuple(mask.shape) != (batch, num_patches):
        raise BadRequest(f"mask has shape {tuple(mask.shape)}, expected [{batch}, {num_patches}] (images, patches)")
    if mask.dtype != torch.bool:
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise BadRequest("mask values must be 0 (visible) or 1 (hidden)")
        mask = mask.bool()
    counts = mask.sum(dim=1)
    if bool((counts != counts[0]).any()):
        raise BadRequest(f"every image's mask must hide the same number of patches (got {counts.tolist()})")
    return mask


def embed_patches(vit: VisionTransformer, imgs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
    """Patch tokens with their position embedding, and the prefix (class, register) tokens with theirs.

    imgs: [N, 3, H, W] -> patches [N, L, D], prefix [N, P, D], grid (h, w). Position embeddings are resampled
    (as timm does) when the grid differs from the model's own.
    """
    x = vit.patch_embed(imgs)
    if x.ndim == 4:  # dynamic_img_size: [N, h, w, D]
        grid = (int(x.shape[1]), int(x.shape[2]))
        x = x.flatten(1, 2)
    else:
        grid = tuple(int(s) for s in vit.patch_embed.grid_size)
    N = x.shape[0]
    prefix = [t.expand(N, -1, -1) for t in (vit.cls_token, vit.reg_token) if t is not None]
    prefix = torch.cat(prefix, dim=1) if prefix else x.new_zeros(N, 0, x.shape[-1])  # [N, P, D]
    if vit.pos_embed is None:
        return x, prefix, grid
    prefix_pos, patch_pos = position_embeddings(vit, grid)  # [1, P or 0, D], [1, L, D]
    x = x + patch_pos
    if prefix_pos.shape[1]:
        prefix = prefix + prefix_pos
    return x, prefix, grid


def encode_tokens(vit: VisionTransformer, prefix: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
    """Run the blocks over prefix + (any subset of) patch tokens. [N, P, D], [N, K, D] -> [N, P+K, D], normed."""
    x = vit.norm_pre(torch.cat([prefix, patches], dim=1))
    x = vit.blocks(x)
    return vit.norm(x)


def position_embeddings(vit: VisionTransformer, grid_hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """A timm ViT's absolute position embeddings for a grid, resampled as timm does when the grid is not the
    model's own: (prefix part [1, P, D], or [1, 0, D] when prefix tokens get none; patch part [1, h*w, D])."""
    embedded_prefix = 0 if vit.no_embed_class else vit.num_prefix_tokens
    pos = vit.pos_embed
    if tuple(grid_hw) != tuple(vit.patch_embed.grid_size):
        pos = resample_abs_pos_embed(pos, new_size=list(grid_hw), old_size=vit.patch_embed.grid_size,
                                     num_prefix_tokens=embedded_prefix)
    return pos[:, :embedded_prefix], pos[:, embedded_prefix:]


def sincos_pos_embed_2d(embed_dim: int, grid_hw: tuple[int, int], num_prefix: int = 1) -> torch.Tensor:
    """MAE's fixed 2D sin-cos position embedding [1, num_prefix + h*w, D] (zeros for the prefix tokens)."""
    if embed_dim % 4:
        raise BadRequest(f"the sin-cos position embedding needs a dimension divisible by 4, not {embed_dim}")
    h, w = grid_hw
    omega = 1.0 / 10000 ** (torch.arange(embed_dim // 4, dtype=torch.float64) / (embed_dim / 4))  # [D/4]

    def embed_1d(pos: torch.Tensor) -> torch.Tensor:  # pos: [M] -> [M, D/2]
        out = torch.outer(pos.reshape(-1), omega)
        return torch.cat([torch.sin(out), torch.cos(out)], dim=1)

    grid_w, grid_h = torch.meshgrid(torch.arange(w, dtype=torch.float64), torch.arange(h, dtype=torch.float64),
                                    indexing="xy")  # as MAE: the first half encodes the column
    emb = torch.cat([embed_1d(grid_w), embed_1d(grid_h)], dim=1)  # [h*w, D]
    emb = torch.cat([torch.zeros(num_prefix, embed_dim, dtype=torch.float64), emb], dim=0)
    return emb.float().unsqueeze(0)


def set_sincos_positions(vit: VisionTransformer) -> None:
    """Write the 2D sin-cos table into a timm ViT's absolute position embedding (zeros for embedded prefix tokens),
    in place; whether it then trains is the caller's choice (MAE and CAE freeze it, DILEMMA trains from it)."""
    embedded_prefix = 0 if vit.no_embed_class else vit.num_prefix_tokens
    with torch.no_grad():
        vit.pos_embed.copy_(sincos_pos_embed_2d(vit.embed_dim, tuple(vit.patch_embed.grid_size), embedded_prefix))


def patch_position_table(vit: VisionTransformer, grid_hw: tuple[int, int]) -> torch.Tensor:
    """The patch position embeddings [1, h*w, D] of a timm ViT for a grid."""
    return position_embeddings(vit, grid_hw)[1]


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

    def gather(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:  # x: [N or 1, L, D], ids: [N, K] -> [N, K, D]
        return torch.gather(x.expand(N, -1, -1), 1, ids.unsqueeze(-1).expand(-1, -1, D))

    kept = gather(tokens, ids_keep) - gather(positions, ids_keep) + gather(positions, ids_position)
    swapped = torch.zeros(N, K, device=tokens.device)
    swapped[:, :S] = 1.0
    return kept, swapped


def encode_visible(vit: VisionTransformer, imgs: torch.Tensor, hidden: torch.Tensor | None = None) -> torch.Tensor:
    """Last-layer (normed) patch tokens of the visible patches only, in patch order.

    imgs: [N, 3, H, W] normalised; hidden: [N, L] bool (True = dropped, same count per image) or None for all.
    -> [N, K, D] with K = L - hidden count.
    """
    x, prefix, _ = embed_patches(vit, imgs)  # x: [N, L, D]
    if hidden is not None:
        x, _, _ = random_masking(x, 0.0, mask=hidden)  # x: [N, K, D], visible patches in order
    return encode_tokens(vit, prefix, x)[:, prefix.shape[1]:]


def forward_with_positions(vit: VisionTransformer, imgs: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
    """Final tokens [N, P+L, D] (normed) when patch token i carries the position embedding of patch
    ``position_ids[n, i]`` instead of its own. imgs: [N, 3, H, W] normalised; position_ids: [N, L] int64.

    With ``position_ids[n] = arange(L)`` this is ``vit.forward_features(imgs)`` (in eval mode).
    """
    tokens, prefix, grid = embed_patches(vit, imgs)  # tokens: [N, L, D] with their own position embeddings
    if tuple(position_ids.shape) != tuple(tokens.shape[:2]):
        raise BadRequest(f"position_ids has shape {tuple(position_ids.shape)}, expected {tuple(tokens.shape[:2])} "
                         f"(images, patches)")
    table = patch_position_table(vit, grid)[0]  # [L, D]
    tokens = tokens + (table[position_ids.to(tokens.device)] - table)  # swap in the other patch's position
    return encode_tokens(vit, prefix, tokens)


def cycle_positions(chosen: torch.Tensor, num_patches: int) -> torch.Tensor:
    """Position ids [L] where the patches ``chosen`` [K] (indices) trade position embeddings in a cycle, each taking
    the one before it in ``chosen`` (as DILEMMA does; with K >= 2 every chosen patch carries a wrong position)."""
    position_ids = torch.arange(num_patches)
    position_ids[chosen] = chosen.roll(1)
    return position_ids


def swap_positions(num_patches: int, ratio: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Position ids [L] where round(ratio * L) random patches (at least 2) trade position embeddings in a
    cycle (`cycle_positions`), so every chosen patch carries a wrong one; and the swapped patches [L] bool."""
    count = min(num_patches, max(2, round(ratio * num_patches)))
    chosen = torch.randperm(num_patches, generator=generator)[:count]
    swapped = torch.zeros(num_patches, dtype=torch.bool)
    swapped[chosen] = True
    return cycle_positions(chosen, num_patches), swapped
