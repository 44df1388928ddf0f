"""What every view returns (`ViewResult`), the one untrained-model warning, and display geometry: how a picture
of a patch grid is enlarged for the screen and how a click on it becomes a patch (`patch_at`).

No Gradio here: the UI (`app.ui`) turns a `ViewResult` into component values and a click event into a `Click`.
"""
from __future__ import annotations

import io
import json
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np
from PIL import Image

from ssl_core.data.images import ImageSource
from ssl_core.features.encoder import Encoder
from ssl_core.render import draw

DISPLAY_MIN_SIDE = 320  # the short side pictures are enlarged to (by a whole factor, so patches stay crisp)
SWAP_BOX = (0, 255, 255)  # boxes the patches given another patch's position (the Lab's and Reconstruct's maps)
SWAP_PROBABILITY = draw.Scale(0.0, 1.0, "inferno", "P(swapped)")  # a location probe's P(wrong position) per token
Captioned = tuple[np.ndarray, str]


@dataclass
class Table:
    headers: list[str]
    rows: list[list]


@dataclass
class ViewResult:
    """One view's answer: what to show, the numbers behind it, and what to download.

    Names are unique across ``pictures``, ``galleries``, ``figures`` and ``tables`` (see `value`).
    """

    pictures: dict[str, np.ndarray] = field(default_factory=dict)  # uint8 RGB [H, W, 3], at display size
    galleries: dict[str, list[Captioned]] = field(default_factory=dict)  # captioned pictures
    figures: dict[str, Any] = field(default_factory=dict)  # plotly figures
    tables: dict[str, Table] = field(default_factory=dict)
    numbers: dict[str, Any] = field(default_factory=dict)  # behind the view: arrays (-> .npz) or JSON values
    files: dict[str, bytes] = field(default_factory=dict)  # further downloads, by file name
    notes: str = ""  # markdown
    details: str = ""  # markdown a view may show after its pictures and figures: the long tables
    warnings: list[str] = field(default_factory=list)  # markdown, shown before the notes
    state: Any = None  # what a later event or the caller needs: an index, a drawn map, search hits
    name: str = "patchlens"  # stem of the numbers file and of the pictures' files: model, view, image
    item_names: dict[str, list[str]] = field(default_factory=dict)  # per gallery, a short name per item (files)

    @property
    def markdown(self) -> str:
        return "\n\n".join(part for part in [*self.warnings, self.notes] if part)

    def value(self, name: str) -> Any:
        """The picture, gallery, figure or table called ``name``; None where the view has none."""
        for kind in (self.pictures, self.galleries, self.figures, self.tables):
            if name in kind:
                return kind[name]
        return None

    def named(self, name: str) -> ViewResult:
        return replace(self, name=name)

    def for_image(self, image_name: str) -> ViewResult:
        """This result with the image's name (without its suffix) added to its name."""
        return self.named(file_stem(self.name, Path(image_name).stem))

    def picture_file_name(self, name: str, item: int | None = None) -> str:
        """The download name of picture ``name``, or of item ``item`` of gallery ``name``: the result's name
        (model, view, image), the picture's, and the item's (from `item_names`, else its number)."""
        parts = [self.name, name]
        if item is not None:
            names = self.item_names.get(name, [])
            parts.append(Path(names[item]).stem if item < len(names) else f"{item + 1:02d}")
        return file_stem(*parts) + ".png"

    def numbers_file(self) -> tuple[str, bytes] | None:
        """The numbers as a file: ``NAME.npz`` when they are all arrays, else ``NAME.json``; None without numbers."""
        if not self.numbers:
            return None
        if all(isinstance(v, np.ndarray) for v in self.numbers.values()):
            buffer = io.BytesIO()
            np.savez_compressed(buffer, **self.numbers)
            return f"{self.name}.npz", buffer.getvalue()
        return f"{self.name}.json", json.dumps(self.numbers, indent=1, default=_jsonable).encode()


def file_stem(*parts: str) -> str:
    """Parts of a download name joined by "_", each with anything but letters, digits, ".", "_", "-" made "-"."""
    cleaned = [re.sub(r"[^A-Za-z0-9._-]+", "-", str(part)).strip("-._") for part in parts]
    return "_".join(part for part in cleaned if part)[:150] or "patchlens"


def _jsonable(value: Any) -> Any:
    return value.tolist() if isinstance(value, (np.ndarray, np.generic)) else float(value)


class Trainable(Protocol):
    @property
    def trained(self) -> bool: ...


def untrained_warning(*models: Trainable) -> list[str]:
    """The one warning for untrained models (random weights) among ``models``, naming them; [] when all are trained."""
    names = [str(getattr(m, "name", None) or type(m).__name__) for m in models if not m.trained]
    if not names:
        return []
    return [f"⚠️ **Untrained (random weights)**: {', '.join(dict.fromkeys(names))} — an untrained baseline: what it "
            "shows comes from colour and layout, not from learning."]


# --------------------------------------------------------------------------------------------- display geometry
class PatchGeometry(Protocol):
    """A picture of a patch grid before display scaling (`PatchFeatures` is one, `DisplayGrid` another)."""

    image: np.ndarray  # [H, W, ...] the processed image (only its shape is read)
    grid_hw: tuple[int, int]
    patch_size: int


@dataclass(frozen=True)
class DisplayGrid:
    """A `PatchGeometry` for pictures that are not `PatchFeatures`."""

    image: np.ndarray  # [H, W, ...]: only its shape is read
    grid_hw: tuple[int, int]
    patch_size: int


def encoder_display_grid(encoder: Encoder, image: ImageSource | Image.Image) -> DisplayGrid:
    """The image as ``encoder`` sees it (resized, both sides whole patches) and its grid; no forward pass."""
    processed = np.asarray(encoder.prepare(image))
    p = encoder.patch_size
    return DisplayGrid(processed, (processed.shape[0] // p, processed.shape[1] // p), p)


def display_factor(geometry: PatchGeometry) -> int:
    """Integer upscaling from the processed image to what the UI shows (patches stay square and crisp)."""
    h, w = geometry.image.shape[:2]
    return max(1, math.ceil(DISPLAY_MIN_SIDE / min(h, w)))


def display_hw(geometry: PatchGeometry) -> tuple[int, int]:
    """(height, width) of the picture `to_display` shows."""
    factor = display_factor(geometry)
    h, w = geometry.image.shape[:2]
    return h * factor, w * factor


def to_display(geometry: PatchGeometry, picture: np.ndarray) -> np.ndarray:
    """A picture at the processed image's size, enlarged by the display factor."""
    factor = display_factor(geometry)
    if factor == 1:
        return picture
    h, w = picture.shape[:2]
    return np.asarray(Image.fromarray(picture).resize((w * factor, h * factor), Image.Resampling.NEAREST))


def shown(geometry: PatchGeometry, picture: np.ndarray, grid: bool = False) -> np.ndarray:
    """A picture at the processed image's size, at display size, with its patch grid drawn when ``grid``."""
    picture = to_display(geometry, picture)
    return draw.patch_grid(picture, geometry.grid_hw) if grid else picture


def shown_map(geometry: PatchGeometry, picture: np.ndarray, scale: draw.Scale, grid: bool = False) -> np.ndarray:
    """A scalar map (coloured on ``scale``) as `shown`, with its colour bar on the right."""
    return draw.with_colorbar(shown(geometry, picture, grid), scale)


class Click(NamedTuple):
    """A click at pixel (x, y) of a displayed picture of ``shown_hw`` = (height, width) pixels."""

    x: float
    y: float
    shown_hw: tuple[int, int]

    @classmethod
    def centre(cls) -> Click:
        return cls(0.5, 0.5, (1, 1))

    @property
    def fraction(self) -> tuple[float, float]:
        """(x / width, y / height), each in [0, 1]."""
        h, w = self.shown_hw
        return min(max(self.x / w, 0.0), 1.0), min(max(self.y / h, 0.0), 1.0)


def patch_at(click: Click, grid_hw: tuple[int, int]) -> tuple[int, int]:
    """The (row, col) of the patch under a click, for a picture showing a grid of ``grid_hw`` patches.

    The picture may be enlarged (display scaling) or show the grid at any other size: the click is read as a
    fraction of the picture's height and width, so the same spot gives the same place in grids of any size.
    """
    h, w = grid_hw
    shown_h, shown_w = click.shown_hw
    return min(max(int(click.y * h // shown_h), 0), h - 1), min(max(int(click.x * w // shown_w), 0), w - 1)
