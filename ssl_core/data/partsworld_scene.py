"""The parts world's scenes: the object classes and their parts, and how one scene is drawn from a seed.

Six object classes (`CLASS_NAMES`) are each a layout of 3-5 kinds of parts (`PART_NAMES`); some kinds of part are
shared between classes (wheels on cars and carts, windows on cars and houses, legs on tables and animals, head,
torso and tail on animals and birds), so a part label means the same thing in every class. Each image shows a main
object at a random position, scale, rotation and mirror, with per-part colour jitter and textures, on a textured
background; sometimes a smaller second object behind it and an occluder in front.

Drawing policy: every shape is rasterised once, without anti-aliasing, into a map of drawing layers; the image
and both label maps are read from that one map (a layer's pixels take the layer's colour or texture, its part
id and its instance id), so the masks match the drawing pixel for pixel. A sample is a pure function of its
seed, its size and the `PartsWorld` settings; the layout scales with the size, so ``sample(seed, 192)`` is
``sample(seed, 96)`` drawn at twice the resolution.

Labels per patch, the example images and the datasets built on these scenes are in `ssl_core.data.partsworld`
(which re-exports everything public here).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw

from ssl_core.errors import BadRequest

CLASS_NAMES: tuple[str, ...] = ("car", "cart", "house", "table", "animal", "bird")
PART_NAMES: tuple[str, ...] = (
    "background", "car_body", "cabin", "window", "wheel", "tray", "handle", "wall", "roof", "door", "tabletop",
    "drawer", "leg", "torso", "head", "tail", "wing", "beak", "occluder",
)
PART_IDS = {name: i for i, name in enumerate(PART_NAMES)}
OCCLUDER_CLASS = -1  # the class recorded for occluder instances
TEXTURES = ("flat", "stripes", "checker", "shade")
BACKGROUNDS = ("flat", "gradient", "stripes", "checker", "noise")

# Typical colour of each part (RGB); each object jitters it, and sometimes replaces it with a random colour.
PART_COLORS: dict[str, tuple[int, int, int]] = {
    "car_body": (200, 40, 40), "cabin": (170, 170, 195), "window": (140, 200, 240), "wheel": (40, 40, 45),
    "tray": (150, 100, 50), "handle": (95, 95, 100), "wall": (230, 200, 140), "roof": (160, 55, 30),
    "door": (100, 60, 30), "tabletop": (175, 125, 65), "drawer": (125, 85, 40), "leg": (110, 75, 40),
    "torso": (205, 150, 80), "head": (225, 175, 105), "tail": (150, 100, 60), "wing": (80, 120, 205),
    "beak": (240, 185, 0),
}


# ------------------------------------------------------------------------------------------------ shapes
# Shapes are polygons [K, 2] in an object's own frame: x to the right, y down, the object within about [-1, 1].
def rect(cx: float, cy: float, w: float, h: float) -> np.ndarray:
    """An axis-aligned rectangle of centre (cx, cy) and size w x h: [4, 2]."""
    return np.array([(cx - w / 2, cy - h / 2), (cx + w / 2, cy - h / 2), (cx + w / 2, cy + h / 2), (cx - w / 2, cy + h / 2)])


_UNIT_CIRCLE = np.stack([np.cos(np.linspace(0, 2 * np.pi, 24, endpoint=False)),
                         np.sin(np.linspace(0, 2 * np.pi, 24, endpoint=False))], -1)  # [24, 2]


def ellipse(cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    """An ellipse of centre (cx, cy) and radii rx, ry as a 24-gon: [24, 2]."""
    return _UNIT_CIRCLE * (rx, ry) + (cx, cy)


def polygon(*points: tuple[float, float]) -> np.ndarray:
    """The polygon through the given (x, y) points: [K, 2]."""
    return np.array(points, dtype=float)


def bar(x0: float, y0: float, x1: float, y1: float, width: float) -> np.ndarray:
    """A thick segment from (x0, y0) to (x1, y1): [4, 2]."""
    d = np.array([x1 - x0, y1 - y0])
    n = np.array([-d[1], d[0]]) / (np.linalg.norm(d) + 1e-9) * width / 2
    return np.array([(x0, y0) + n, (x1, y1) + n, (x1, y1) - n, (x0, y0) - n])


Shape = tuple[str, np.ndarray]  # (part name, polygon)


# ------------------------------------------------------------------------------------------------ objects
def car(rng: np.random.Generator) -> list[Shape]:
    shapes = [("car_body", rect(0, 0.1, 1.9, 0.55)),
              ("cabin", polygon((-0.6, -0.18), (0.5, -0.18), (0.3, -0.62), (-0.4, -0.62)))]
    shapes += [("window", rect(x, -0.38, 0.28, 0.26)) for x in ((-0.22, 0.14) if rng.random() < 0.7 else (-0.05,))]
    return shapes + [("wheel", ellipse(x, 0.4, 0.26, 0.26)) for x in (-0.55, 0.55)]


def cart(rng: np.random.Generator) -> list[Shape]:
    shapes = [("handle", bar(0.55, -0.2, 1.0, -0.8, 0.12)),
              ("tray", polygon((-0.85, -0.4), (0.85, -0.4), (0.6, 0.2), (-0.6, 0.2)))]
    return shapes + [("wheel", ellipse(x, 0.35, 0.26, 0.26)) for x in ((-0.35, 0.35) if rng.random() < 0.7 else (0.0,))]


def house(rng: np.random.Generator) -> list[Shape]:
    shapes = [("wall", rect(0, 0.3, 1.3, 1.0)), ("roof", polygon((-0.9, -0.2), (0.9, -0.2), (0, -0.95))),
              ("door", rect(0.27, 0.55, 0.3, 0.5))]
    return shapes + [("window", rect(x, y, 0.28, 0.28)) for x, y in ((-0.32, 0.15), (0.28, 0.02))[:1 + int(rng.random() < 0.6)]]


def table(rng: np.random.Generator) -> list[Shape]:
    legs = (-0.8, 0.8) if rng.random() < 0.5 else (-0.8, -0.5, 0.5, 0.8)
    shapes = [("leg", rect(x, 0.25, 0.13, 0.95)) for x in legs] + [("tabletop", rect(0, -0.3, 1.95, 0.2))]
    return shapes + ([("drawer", rect(0, -0.07, 0.8, 0.26))] if rng.random() < 0.6 else [])


def animal(rng: np.random.Generator) -> list[Shape]:
    shapes = [("tail", bar(-0.7, -0.05, -1.0, -0.5, 0.11))]
    shapes += [("leg", rect(x, 0.42, 0.13, 0.62)) for x in (-0.5, -0.28, 0.28, 0.5)]
    return shapes + [("torso", ellipse(0, 0, 0.78, 0.36)), ("head", ellipse(0.82, -0.38, 0.26, 0.26))]


def bird(rng: np.random.Generator) -> list[Shape]:
    up = rng.random() < 0.5
    wing = polygon((-0.35, -0.05), (0.3, -0.05), (-0.1, -0.8)) if up else polygon((-0.35, 0.0), (0.3, 0.0), (-0.2, 0.6))
    return [("tail", bar(-0.45, 0.0, -0.95, -0.2, 0.14)), ("beak", polygon((0.7, -0.33), (0.7, -0.15), (1.0, -0.24))),
            ("torso", ellipse(0, 0, 0.58, 0.3)), ("head", ellipse(0.58, -0.24, 0.21, 0.21)), ("wing", wing)]


OBJECTS: dict[str, Callable[[np.random.Generator], list[Shape]]] = {
    "car": car, "cart": cart, "house": house, "table": table, "animal": animal, "bird": bird,
}
CLASS_PARTS: dict[str, frozenset[str]] = {  # every kind of part each class can have
    "car": frozenset({"car_body", "cabin", "window", "wheel"}), "cart": frozenset({"tray", "handle", "wheel"}),
    "house": frozenset({"wall", "roof", "door", "window"}), "table": frozenset({"tabletop", "drawer", "leg"}),
    "animal": frozenset({"torso", "leg", "head", "tail"}), "bird": frozenset({"torso", "head", "tail", "wing", "beak"}),
}


# ------------------------------------------------------------------------------------------------ samples
@dataclass(frozen=True)
class DrawnPart:
    """One kind of part of one instance, as drawn: all its shapes share this colour and texture."""

    part: int  # part id (PART_NAMES)
    instance: int  # instance id in the instance map
    color: tuple[int, int, int]
    texture: str  # one of TEXTURES; "flat" pixels equal `color` exactly


@dataclass(frozen=True)
class PartsSample:
    image: np.ndarray  # [S, S, 3] uint8
    object_class: int  # class of the main object (CLASS_NAMES)
    part_map: np.ndarray  # [S, S] uint8 part id, 0 = background (PART_NAMES)
    instance_map: np.ndarray  # [S, S] uint8: 0 background, 1 the main object, 2... other objects, then occluders
    instance_classes: tuple[int, ...]  # class of instance 1, 2, ... (OCCLUDER_CLASS for occluders)
    parts: tuple[DrawnPart, ...]  # in drawing order
    seed: int

    @property
    def class_name(self) -> str:
        return CLASS_NAMES[self.object_class]


@dataclass(frozen=True)
class PartsWorld:
    """The generator's settings; `sample` draws one image from them."""

    p_second_object: float = 0.35
    p_occluder: float = 0.3
    p_random_color: float = 0.15  # chance that a part ignores its typical colour
    textures: tuple[str, ...] = TEXTURES
    backgrounds: tuple[str, ...] = BACKGROUNDS
    max_rotation_deg: float = 25.0
    scale_range: tuple[float, float] = (0.30, 0.45)  # main object's half-size, as a fraction of the image side

    def sample(self, seed: int, size: int = 96) -> PartsSample:
        """The scene of ``seed`` drawn at ``size`` x ``size`` pixels."""
        if size < 16:
            raise BadRequest(f"size must be at least 16 pixels, got {size}")
        rng = np.random.default_rng(seed)
        canvas = _Canvas(size)
        background = self.draw_background(rng, size)
        object_class = int(rng.integers(len(CLASS_NAMES)))
        second = (int(rng.integers(len(CLASS_NAMES))) if rng.random() < self.p_second_object else None)
        if second is not None:  # smaller and behind the main object
            half = rng.uniform(0.14, 0.22) * size
            centre = rng.uniform(0.15, 0.85, 2) * size
            self.draw_object(canvas, rng, second, 2, centre, half)
        centre = (0.5 + rng.uniform(-0.14, 0.14, 2)) * size
        half = rng.uniform(*self.scale_range) * size
        self.draw_object(canvas, rng, object_class, 1, centre, half)
        instance_classes = [object_class] + ([second] if second is not None else [])
        if rng.random() < self.p_occluder:
            self.draw_occluder(canvas, rng, len(instance_classes) + 1, centre, half)
            instance_classes.append(OCCLUDER_CLASS)
        image, part_map, instance_map = canvas.render(background, rng)
        return PartsSample(image=image, object_class=object_class, part_map=part_map, instance_map=instance_map,
                           instance_classes=tuple(instance_classes), parts=tuple(canvas.parts), seed=int(seed))

    def draw_object(self, canvas: "_Canvas", rng: np.random.Generator, object_class: int, instance: int,
                    centre: np.ndarray, half: float) -> None:
        shapes = OBJECTS[CLASS_NAMES[object_class]](rng)
        angle = math.radians(rng.uniform(-self.max_rotation_deg, self.max_rotation_deg))
        scale = np.array([half * (-1 if rng.random() < 0.5 else 1), half * rng.uniform(0.85, 1.15)])
        rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
        styles: dict[str, int] = {}  # part name -> layer style index: one colour and texture per part kind
        for name, points in shapes:
            if name not in styles:
                styles[name] = canvas.add_style(DrawnPart(PART_IDS[name], instance, self.part_color(rng, name),
                                                          self.texture(rng)), rng)
            canvas.draw((points * scale) @ rotation.T + centre, styles[name])

    def draw_occluder(self, canvas: "_Canvas", rng: np.random.Generator, instance: int, centre: np.ndarray,
                      half: float) -> None:
        size = canvas.size
        where = centre + rng.uniform(-0.6, 0.6, 2) * half
        color = tuple(int(c) for c in rng.integers(30, 226, 3))
        style = canvas.add_style(DrawnPart(PART_IDS["occluder"], instance, color, self.texture(rng)), rng)
        if rng.random() < 0.5:
            length, width, angle = rng.uniform(0.35, 0.7) * size, rng.uniform(0.06, 0.12) * size, rng.uniform(0, np.pi)
            d = np.array([math.cos(angle), math.sin(angle)]) * length / 2
            canvas.draw(bar(*(where - d), *(where + d), width), style)
        else:
            r = rng.uniform(0.08, 0.15, 2) * size
            canvas.draw(ellipse(where[0], where[1], r[0], r[1]), style)

    def part_color(self, rng: np.random.Generator, name: str) -> tuple[int, int, int]:
        if rng.random() < self.p_random_color:
            return tuple(int(c) for c in rng.integers(20, 236, 3))
        base = np.array(PART_COLORS[name], dtype=float) * rng.uniform(0.8, 1.15) + rng.normal(0, 14, 3)
        return tuple(int(c) for c in base.clip(0, 255).round())

    def texture(self, rng: np.random.Generator) -> str:
        return self.textures[int(rng.integers(len(self.textures)))] if rng.random() < 0.45 else "flat"

    def draw_background(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """A muted background [S, S, 3] float: flat, gradient, stripes, checker or smooth noise."""
        kind = self.backgrounds[int(rng.integers(len(self.backgrounds)))]
        color_a = rng.uniform(50, 210) + rng.uniform(-35, 35, 3)
        color_b = rng.uniform(50, 210) + rng.uniform(-35, 35, 3)
        if kind == "noise":
            cells = int(rng.integers(3, 9))
            coarse = (color_a + rng.normal(0, 30, (cells, cells, 3))).clip(0, 255).astype(np.uint8)
            smooth = np.asarray(Image.fromarray(coarse).resize((size, size), Image.BILINEAR), dtype=np.float32)
            grain = np.random.default_rng(int(rng.integers(1 << 62)))  # one draw from rng whatever the size
            return smooth + grain.normal(0, 6, (size, size, 3))
        ys, xs = pixel_coordinates(size)
        return pattern(kind, ys, xs, color_a, color_b, rng, size).reshape(size, size, 3)


@lru_cache(maxsize=8)
def pixel_coordinates(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column of every pixel of a size x size image, row-major ([S*S] float32 each; read-only)."""
    ys, xs = np.divmod(np.arange(size * size, dtype=np.float32), size)
    ys.flags.writeable = xs.flags.writeable = False
    return ys, xs


def pattern(kind: str, ys: np.ndarray, xs: np.ndarray, color_a: np.ndarray, color_b: np.ndarray,
            rng: np.random.Generator, size: int) -> np.ndarray:
    """Colours [n, 3] of pixels at (ys, xs) for a pattern kind; periods scale with the image size."""
    angle = rng.uniform(0, np.pi)
    if kind == "flat":
        return np.broadcast_to(np.asarray(color_a, np.float32), (len(ys), 3))
    along = xs * math.cos(angle) + ys * math.sin(angle)
    if kind == "stripes":
        phase = np.floor(along / (rng.uniform(0.04, 0.1) * size)) % 2
    elif kind == "checker":
        period = rng.uniform(0.04, 0.09) * size
        phase = (np.floor(xs / period) + np.floor(ys / period)) % 2
    elif kind in ("gradient", "shade"):
        phase = (along - along.min()) / max(float(np.ptp(along)), 1.0)
    else:
        raise BadRequest(f"unknown pattern kind '{kind}'")
    return color_a + phase[:, None] * (np.asarray(color_b, np.float32) - color_a)


class _Canvas:
    """Drawing layers of one sample: shapes are rasterised into a layer map; styles say what each layer is."""

    def __init__(self, size: int):
        self.size = size
        self.layers = Image.new("L", (size, size), 0)
        self.pen = ImageDraw.Draw(self.layers)
        self.parts: list[DrawnPart] = []
        self.second_colors: list[np.ndarray] = []

    def add_style(self, part: DrawnPart, rng: np.random.Generator) -> int:
        if len(self.parts) >= 255:
            raise BadRequest("too many parts in one sample (at most 255 drawing layers)")
        self.parts.append(part)
        color = np.array(part.color, np.float32)
        self.second_colors.append(color * 0.55 if part.texture != "shade" else (color * 1.35 + 20).clip(0, 255))
        return len(self.parts)

    def draw(self, points: np.ndarray, layer: int) -> None:
        self.pen.polygon([tuple(p) for p in points.tolist()], fill=layer)

    def render(self, background: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(image [S, S, 3] uint8, part map [S, S] uint8, instance map [S, S] uint8) read from the one layer map.

        background: [S, S, 3] float, shown where no layer was drawn.
        """
        layers = np.asarray(self.layers)
        flat_layers = layers.ravel()
        color_lut = np.array([(0, 0, 0)] + [p.color for p in self.parts], np.float32)
        image = np.where(flat_layers[:, None] > 0, color_lut[flat_layers], background.reshape(-1, 3))
        all_ys, all_xs = pixel_coordinates(self.size)
        for index, part in enumerate(self.parts, start=1):
            if part.texture == "flat":
                continue
            where = np.flatnonzero(flat_layers == index)
            if where.size:
                image[where] = pattern(part.texture, all_ys[where], all_xs[where], color_lut[index],
                                       self.second_colors[index - 1], rng, self.size)
        part_lut = np.array([0] + [p.part for p in self.parts], np.uint8)
        instance_lut = np.array([0] + [p.instance for p in self.parts], np.uint8)
        image = image.reshape(self.size, self.size, 3).clip(0, 255).round().astype(np.uint8)
        return image, part_lut[layers], instance_lut[layers]
