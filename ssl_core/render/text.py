"""Text on the PIL pictures (PNG figures): the built-in font, only glyphs it has, lines that fit, and clean axis ticks.

Pillow's built-in font (Aileron, a subset) covers ASCII and a few symbols ("·", "…", "°") but not arrows, dashes,
"×" or accented letters; a character it lacks is drawn as an empty box. `plain` swaps such characters for ones it has
("→" -> "->", "é" -> "e"), and `write` draws text through it, wrapped or shortened to a width instead of running
past the picture's edge. `nice_ticks` and `tick_texts` give axis ticks at round steps, written alike ("0.00",
"0.25", ...). No analysis here.
"""
from __future__ import annotations

import math
import threading
import unicodedata
from functools import lru_cache
from typing import Literal

from PIL import Image, ImageDraw, ImageFont

INK = (20, 20, 20)
ELLIPSIS = "..."
# Stand-ins for characters the font may lack (used only when it lacks them).
STAND_INS = {"→": "->", "←": "<-", "↑": "^", "↓": "v", "⇒": "=>", "—": "-", "–": "-", "−": "-", "×": "x", "≥": ">=",
             "≤": "<=", "≈": "~", "±": "+/-", "…": "...", "·": "-", "•": "-", "µ": "u", "²": "2", "³": "3",
             "‘": "'", "’": "'", "“": '"', "”": '"', "\u00a0": " ", "\t": " "}
_NOTDEF = "\uffff"  # a non-character: drawn as the font's "missing glyph" box
_lock = threading.Lock()


def font(size: int = 14) -> ImageFont.ImageFont:
    """Pillow's built-in font at ``size`` pixels (a fixed-size bitmap font before Pillow 10.1)."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


@lru_cache(maxsize=4096)
def has_glyph(char: str) -> bool:
    """Whether the built-in font draws ``char`` (one character) as itself, not as its missing-glyph box."""
    if char == " ":
        return True
    probe = font(24)
    with _lock:
        try:
            mask, box = probe.getmask(char), probe.getmask(_NOTDEF)
            return not (mask.size == box.size and bytes(mask) == bytes(box))
        except (UnicodeError, ValueError, OSError):  # the bitmap font's Latin-1 only
            return False


def plain(text: object) -> str:
    """``text`` with each character the font lacks replaced by a stand-in it has (`STAND_INS`, else the letter
    without its accents, else "?"); line breaks become spaces."""
    out = []
    for char in str(text).replace("\r\n", " ").replace("\n", " "):
        if has_glyph(char):
            out.append(char)
            continue
        for candidate in (STAND_INS.get(char, ""),
                          "".join(c for c in unicodedata.normalize("NFKD", char) if not unicodedata.combining(c))):
            if candidate and all(has_glyph(c) for c in candidate):
                out.append(candidate)
                break
        else:
            out.append("?")
    return "".join(out)


def width_of(text: str, face: ImageFont.ImageFont) -> float:
    """Pixels ``text`` takes on one line in ``face``."""
    return face.getlength(text)


def line_height(face: ImageFont.ImageFont) -> int:
    """Pixels from one line of text to the next."""
    ascent, descent = face.getmetrics()
    return ascent + descent + 3


def fit(text: object, face: ImageFont.ImageFont, width: float, keep: Literal["start", "end"] = "start") -> str:
    """``text`` (made `plain`) on one line of at most ``width`` pixels: whole when it fits, else shortened with
    "..." at the end (``keep="start"``) or at the start (``keep="end"``, for file names)."""
    text = plain(text)
    if width_of(text, face) <= width:
        return text
    lo, hi = 0, len(text)  # the most characters kept that fit with the ellipsis
    while lo < hi:
        mid = (lo + hi + 1) // 2
        kept = text[:mid] if keep == "start" else text[len(text) - mid:]
        if width_of(kept + ELLIPSIS if keep == "start" else ELLIPSIS + kept, face) <= width:
            lo = mid
        else:
            hi = mid - 1
    if keep == "start":
        return text[:lo].rstrip() + ELLIPSIS
    return ELLIPSIS + text[len(text) - lo:].lstrip()


def wrap(text: object, face: ImageFont.ImageFont, width: float, max_lines: int | None = None) -> list[str]:
    """``text`` (made `plain`) in lines of at most ``width`` pixels, broken between words (a word longer than a line
    is broken inside); past ``max_lines`` the last line ends in "..."."""
    lines: list[str] = []
    line = ""
    for word in plain(text).split(" "):
        candidate = f"{line} {word}" if line else word
        if width_of(candidate, face) <= width:
            line = candidate
            continue
        if line:
            lines.append(line)
        while width_of(word, face) > width and len(word) > 1:  # a word wider than a line: cut it
            cut = max(1, max(i for i in range(1, len(word) + 1) if i == 1 or width_of(word[:i], face) <= width))
            lines.append(word[:cut])
            word = word[cut:]
        line = word
    if line or not lines:
        lines.append(line)
    if max_lines is not None and len(lines) > max_lines:
        last = " ".join(lines[max_lines - 1:])
        while last and width_of(last + ELLIPSIS, face) > width:
            last = last[:-1]
        lines = lines[:max_lines - 1] + [last.rstrip() + ELLIPSIS]
    return lines


def text_height(text: object, face: ImageFont.ImageFont, width: float, max_lines: int | None = None) -> int:
    """Pixels `write` takes for ``text`` wrapped to ``width``."""
    return len(wrap(text, face, width, max_lines)) * line_height(face)


def write(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: object, face: ImageFont.ImageFont,
          width: float | None = None, max_lines: int | None = None, fill: tuple[int, ...] = INK,
          align: Literal["left", "centre"] = "left") -> int:
    """Draw ``text`` with glyphs the font has, from its top left (``align="centre"``: its top centre) at ``xy``,
    wrapped to ``width`` pixels (one line when ``max_lines`` is 1); -> the pixels it took downwards."""
    lines = [plain(text)] if width is None else wrap(text, face, width, max_lines)
    step = line_height(face)
    for i, line in enumerate(lines):
        draw.text((xy[0], xy[1] + i * step), line, fill=fill, font=face, anchor="mt" if align == "centre" else "lt")
    return len(lines) * step


def vertical_text(text: object, face: ImageFont.ImageFont, length: int, max_lines: int | None = None,
                  fill: tuple[int, ...] = INK, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """``text`` written upwards (read with the head turned left), wrapped to ``length`` pixels and centred along
    them -> a picture [length, lines * line height]."""
    lines = wrap(text, face, length, max_lines)
    flat = Image.new("RGB", (max(length, 1), max(len(lines) * line_height(face), 1)), background)
    draw = ImageDraw.Draw(flat)
    for i, line in enumerate(lines):
        draw.text((flat.width / 2, i * line_height(face)), line, fill=fill, font=face, anchor="mt")
    return flat.rotate(90, expand=True)


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Ticks at a round step (1, 2, 2.5 or 5 times a power of ten) from at or below ``low`` to at or above
    ``high``: the finest such step giving at most ``count + 1`` ticks. The first and last are the axis' new ends."""
    if not (math.isfinite(low) and math.isfinite(high)):
        low, high = 0.0, 1.0
    if high <= low:
        low, high = low - 0.5, high + 0.5
    power = 10 ** math.floor(math.log10((high - low) / max(count - 1, 1)))
    for step in (m * power for m in (0.5, 1, 2, 2.5, 5, 10, 20, 25, 50)):
        first, last = math.floor(low / step + 1e-9), math.ceil(high / step - 1e-9)
        if last - first <= count:
            break
    return [round(i * step, 12) for i in range(first, last + 1)]


def tick_texts(ticks: list[float]) -> list[str]:
    """Ticks written with the decimals their step needs, the same number for each ("0.00", "0.25", ...)."""
    if len(ticks) < 2:
        return [f"{t:g}" for t in ticks]
    step = abs(ticks[1] - ticks[0])
    decimals = next((d for d in range(0, 10) if abs(round(step, d) - step) < 1e-9 * max(step, 1)), 10)
    return [f"{t + 0.0:.{decimals}f}" for t in ticks]  # + 0.0: no "-0"


__all__ = ["INK", "font", "has_glyph", "plain", "fit", "wrap", "write", "text_height", "line_height", "vertical_text",
           "nice_ticks", "tick_texts", "width_of"]
