"""Pictures made of lines: two pictures side by side with lines between corresponding patches (best buddies), and
curves against a whole-number axis (a PNG of a layer sweep or of where the heads look, where plotly cannot write one).
No analysis here."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw

from ssl_core.render.draw import PALETTE
from ssl_core.render.text import INK, fit, font, line_height, nice_ticks, text_height, tick_texts, width_of, write

if TYPE_CHECKING:
    from ssl_core.analyses.attention_range import AttentionRange


def correspondence_picture(image_a: np.ndarray, image_b: np.ndarray, patches_a: np.ndarray, patches_b: np.ndarray,
                           patch_size: int, gap: int = 16, height: int = 384) -> np.ndarray:
    """image_a, image_b: [H, W, 3] uint8 (the processed images); patches_*: [M, 2] (row, col) pairs.

    Both pictures are scaled to ``height`` and put side by side; each pair is a line between patch centres
    with a dot at each end, coloured from the palette in order (most similar first). -> [height, W', 3] uint8.
    """
    scale_a, scale_b = height / image_a.shape[0], height / image_b.shape[0]
    width_a, width_b = round(image_a.shape[1] * scale_a), round(image_b.shape[1] * scale_b)
    sheet = Image.new("RGB", (width_a + gap + width_b, height), (255, 255, 255))
    sheet.paste(Image.fromarray(image_a).resize((width_a, height), Image.Resampling.BICUBIC), (0, 0))
    sheet.paste(Image.fromarray(image_b).resize((width_b, height), Image.Resampling.BICUBIC), (width_a + gap, 0))
    draw = ImageDraw.Draw(sheet)
    for i, ((ra, ca), (rb, cb)) in enumerate(zip(patches_a, patches_b)):
        colour = tuple(int(v) for v in PALETTE[i % len(PALETTE)])
        start = ((ca + 0.5) * patch_size * scale_a, (ra + 0.5) * patch_size * scale_a)
        end = (width_a + gap + (cb + 0.5) * patch_size * scale_b, (rb + 0.5) * patch_size * scale_b)
        draw.line([start, end], fill=colour, width=2)
        for x, y in (start, end):
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour, outline=(255, 255, 255))
    return np.asarray(sheet)


def curves_picture(x: list[int], curves: dict[str, list[float]], title: str = "", x_title: str = "",
                   size: tuple[int, int] = (720, 420)) -> np.ndarray:
    """Curves (name -> one value per x, NaN: a gap) as a line chart with a dot per value, y ticks at a round step
    over a range holding 0, 1 and every value, x ticks at each x (every k-th when crowded), a title wrapped to the
    width and a legend. -> [height, width, 3] uint8."""
    width, height = size
    small, big = font(12), font(14)
    step = line_height(small)
    left, right = 60, 20
    top = 10 + (text_height(title, big, width - left - right, max_lines=3) + 8 if title else 20)
    bottom = 44 + step * len(curves)
    values = np.array([v for vs in curves.values() for v in vs], dtype=np.float64)
    finite = values[np.isfinite(values)]
    ticks = nice_ticks(min(0.0, *finite, 0.0), max(1.0, *finite, 1.0))
    low, high = ticks[0], ticks[-1]
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    span_x = max(max(x) - min(x), 1)

    def at(xi: float, yi: float) -> tuple[float, float]:
        return (left + (xi - min(x)) / span_x * (width - left - right),
                height - bottom - (yi - low) / (high - low) * (height - top - bottom))

    draw.rectangle([left, top, width - right, height - bottom], outline=INK)
    for y, label in zip(ticks, tick_texts(ticks)):
        draw.line([(left - 4, at(min(x), y)[1]), (left, at(min(x), y)[1])], fill=INK)
        draw.text((left - 7, at(min(x), y)[1]), label, fill=INK, font=small, anchor="rm")
    label_width = max(width_of(str(xi), small) for xi in x) + 8
    every = max(1, int(np.ceil(len(x) * label_width / (width - left - right))))
    for xi in x[::every]:
        draw.text((at(xi, low)[0], height - bottom + 4), str(xi), fill=INK, font=small, anchor="mt")
    write(draw, ((left + width - right) / 2, height - bottom + 20), x_title, small, width - left - right, 1,
          align="centre")
    if title:
        write(draw, (left, 10), title, big, width - left - right, max_lines=3)
    for i, (name, ys) in enumerate(curves.items()):
        colour = tuple(int(v) for v in PALETTE[i % len(PALETTE)])
        points = [at(xi, yi) if np.isfinite(yi) else None for xi, yi in zip(x, ys)]
        for a, b in zip(points, points[1:]):
            if a is not None and b is not None:
                draw.line([a, b], fill=colour, width=2)
        for p in (p for p in points if p is not None):
            draw.ellipse([p[0] - 3, p[1] - 3, p[0] + 3, p[1] + 3], fill=colour)
        draw.text((left, height - bottom + 40 + step * i), fit(f"-- {name}", small, width - left - right),
                  fill=colour, font=small)
    return np.asarray(sheet)


def attention_range_pictures(results: dict[str, AttentionRange]) -> list[np.ndarray]:
    """Heads averaged, one line per model: the attention distance relative to uniform attention's and the query-key
    NMI against the block, as two line charts; a shallower model's line ends at its last block."""
    depth = max(result.distance.shape[0] for result in results.values())

    def padded(values: np.ndarray) -> list[float]:  # [L, heads] -> one value per block, NaN past the model's depth
        return [*values.mean(1).tolist(), *[float("nan")] * (depth - values.shape[0])]

    return [curves_picture(list(range(depth)), {name: padded(getattr(result, measure)) for name, result in
                                                results.items()}, title=title, x_title="block")
            for measure, title in (("relative_distance", "attention distance / uniform attention's (1: as spread)"),
                                   ("nmi", "query-key NMI (0: every query attends alike)"))]


__all__ = ["correspondence_picture", "curves_picture", "attention_range_pictures"]
