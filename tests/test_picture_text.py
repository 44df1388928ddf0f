"""Text on the PNG pictures (PIL, Pillow's built-in font): every character drawn is one the font has, names are not
cut, text stays inside the picture, and axis ticks are round. Checked on the strings handed to ``ImageDraw.text``."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from PIL import ImageDraw, ImageFont

from ssl_core.render import draw, text
from ssl_core.render.figures import heatmap_picture, scatter_picture
from ssl_core.render.lines import curves_picture


@dataclass
class Drawn:
    string: str
    box: tuple[float, float, float, float]  # its pixels (left, top, right, bottom)
    size: tuple[int, int]  # (width, height) of the picture it was drawn on


@pytest.fixture
def drawn(monkeypatch) -> list[Drawn]:
    """Every string drawn with ``ImageDraw.text`` while the test runs, with where it landed."""
    calls: list[Drawn] = []
    original = ImageDraw.ImageDraw.text

    def record(self, xy, string, fill=None, font=None, anchor=None, *args, **kwargs):
        calls.append(Drawn(string, self.textbbox(xy, string, font=font, anchor=anchor), self.im.size))
        return original(self, xy, string, fill, font, anchor, *args, **kwargs)

    monkeypatch.setattr(ImageDraw.ImageDraw, "text", record)
    return calls


def missing_glyphs(strings: list[str]) -> set[str]:
    """Characters of ``strings`` the built-in font draws as its missing-glyph box (compared pixel for pixel)."""
    face = ImageFont.load_default(size=24)
    box = face.getmask("\uffff")
    return {c for s in strings for c in s
            if c != " " and (m := face.getmask(c)).size == box.size and bytes(m) == bytes(box)}


def inside(d: Drawn) -> bool:
    return d.box[0] >= 0 and d.box[1] >= 0 and d.box[2] <= d.size[0] and d.box[3] <= d.size[1]


CKA_TITLE = ("Linear CKA between patchlens-sup and patchlens-dino: residual stream after each block, 3 images, "
             "4x4 pooled grid per image (48 samples)")


def test_the_cka_picture_writes_whole_names_in_glyphs_the_font_has_inside_the_picture(drawn):
    labels = [f"block {i}" for i in range(6)]
    heatmap_picture(np.eye(6), labels, labels, CKA_TITLE, row_title="patchlens-sup", col_title="patchlens-dino")
    strings = [d.string for d in drawn]
    assert not missing_glyphs(strings), strings  # was: "↑ patchlens-" and "patchlens-dino →" drawn as boxes
    joined = " ".join(strings)
    assert "patchlens-sup" in joined and "patchlens-dino" in joined  # was: "patchlens-" (cut at 12 characters)
    assert " ".join(" ".join(strings).split()).find(CKA_TITLE) >= 0  # the whole title, in lines
    assert all(inside(d) for d in drawn), [(d.string, d.box, d.size) for d in drawn if not inside(d)]


def test_curves_have_round_ticks_and_a_title_that_fits(drawn):
    title = "attention distance / uniform attention's (1: as spread) " * 3
    curves_picture(list(range(6)), {"patchlens-sup": [0.9, 1.002, 0.8, 0.7, 0.5, 0.3], "a × b": [0.1] * 6},
                   title=title, x_title="block")
    strings = [d.string for d in drawn]
    assert {"0.00", "0.25", "0.50", "0.75", "1.00", "1.25"} <= set(strings)
    assert "0.501" not in strings  # was: ticks at 0, the middle and the top of [0, 1.002]
    assert not missing_glyphs(strings) and "-- a x b" in strings
    assert all(inside(d) for d in drawn), [(d.string, d.box, d.size) for d in drawn if not inside(d)]


def test_a_scatter_keeps_the_end_of_long_legend_names_and_wraps_its_title(drawn):
    coords = np.random.default_rng(0).random((20, 2))
    legend = [("/photos/holidays/2024/a_rather_long_name_from_the_café_01.png", (255, 0, 0))]
    scatter_picture(coords, np.zeros((20, 3), np.uint8), size=(300, 200), legend=legend, title="UMAP · colour: " * 9)
    strings = [d.string for d in drawn]
    assert any(s.startswith("...") and s.endswith("the_cafe_01.png") for s in strings), strings
    assert not missing_glyphs(strings)
    assert all(inside(d) for d in drawn), [(d.string, d.box, d.size) for d in drawn if not inside(d)]


def test_panel_titles_and_colour_bar_names_are_shortened_to_fit(drawn):
    draw.panel([np.zeros((8, 8, 3), np.uint8)] * 2, ["a title much longer than the cell → here", "ok"], cell=80)
    draw.with_colorbar(np.zeros((60, 60, 3), np.uint8), draw.Scale(0, 1, "viridis", "cosine to the query patch"))
    strings = [d.string for d in drawn]
    assert "ok" in strings and any(s.startswith("a title") and s.endswith("...") for s in strings)
    assert not missing_glyphs(strings)
    assert all(inside(d) for d in drawn), [(d.string, d.box, d.size) for d in drawn if not inside(d)]


def test_plain_swaps_characters_the_font_lacks_and_keeps_those_it_has():
    assert text.plain("↑ a → b — c × d") == "^ a -> b - c x d"
    assert text.plain("café · 3°") == "cafe · 3°" and text.plain("漢") == "?"
    face = text.font(11)
    assert text.fit("patchlens-sup", face, 500) == "patchlens-sup"
    short = text.fit("/a/long/path/to/file_01.png", face, 60, keep="end")
    assert short.startswith("...") and short.endswith("01.png") and face.getlength(short) <= 60
    lines = text.wrap(CKA_TITLE, face, 200)
    assert len(lines) > 1 and " ".join(lines) == CKA_TITLE and all(face.getlength(line) <= 200 for line in lines)


@pytest.mark.parametrize("low, high, expected", [
    (0.0, 1.002, ["0.00", "0.25", "0.50", "0.75", "1.00", "1.25"]),
    (-0.05, 1.0, ["-0.25", "0.00", "0.25", "0.50", "0.75", "1.00"]),
    (0.0, 1.0, ["0.0", "0.2", "0.4", "0.6", "0.8", "1.0"]),
    (0.0, 37.0, ["0", "10", "20", "30", "40"]),
])
def test_ticks_are_round_steps_written_alike(low, high, expected):
    assert text.tick_texts(text.nice_ticks(low, high)) == expected


class MonoFace:
    """A stand-in font: every character 10 px wide, ascent 8 and descent 2 (so exact lines can be asserted)."""

    def getlength(self, string: str) -> float:
        return 10.0 * len(string)

    def getmetrics(self) -> tuple[int, int]:
        return 8, 2


def test_fit_keeps_what_fits_with_an_ellipsis_at_the_chosen_end():
    face = MonoFace()
    assert text.fit("abcdefghij", face, 100) == "abcdefghij"  # 100 px: whole
    assert text.fit("abcdefghij", face, 99) == "abcdef..."  # 6 characters and "..." fill 90 px
    assert text.fit("abcdefghij", face, 60) == "abc..."
    assert text.fit("abcdefghij", face, 60, keep="end") == "...hij"
    assert text.fit("ab cdefgh", face, 60) == "ab..."  # no space before the ellipsis
    assert text.fit("abcdefgh ij", face, 60, keep="end") == "...ij"
    assert text.fit("abcdef", face, 25) == "..."


def test_wrap_breaks_between_words_cuts_long_words_and_ends_the_last_line_in_an_ellipsis():
    face = MonoFace()
    assert text.wrap("aa bb cc", face, 50) == ["aa bb", "cc"]
    assert text.wrap("aa bb cc", face, 49) == ["aa", "bb", "cc"]
    assert text.wrap("abcdefgh", face, 30) == ["abc", "def", "gh"]
    assert text.wrap("x abcdefgh", face, 30) == ["x", "abc", "def", "gh"]
    assert text.wrap("", face, 30) == [""]
    assert text.wrap("aa bb cc dd", face, 50, max_lines=2) == ["aa bb", "cc dd"]
    assert text.wrap("aa bb cc dd ee", face, 50, max_lines=2) == ["aa bb", "cc..."]
    assert text.wrap("aa bb cc dd", face, 50, max_lines=1) == ["aa..."]
    assert text.line_height(face) == 13 and text.text_height("aa bb cc", face, 50) == 26


def test_write_draws_each_wrapped_line_one_line_height_down_and_says_how_far_it_went():
    calls = []

    class Draw:
        def text(self, xy, string, fill=None, font=None, anchor=None):
            calls.append((xy, string, anchor))

    face = MonoFace()
    assert text.write(Draw(), (5, 7), "aa bb cc", face, width=50) == 26
    assert calls == [((5, 7), "aa bb", "lt"), ((5, 20), "cc", "lt")]
    calls.clear()
    assert text.write(Draw(), (5, 7), "a → b", face, align="centre") == 13  # no width: one line, made plain
    assert calls == [((5, 7), "a -> b", "mt")]


def test_vertical_text_is_a_picture_turned_upwards_with_one_column_per_line():
    face = text.font(11)
    picture = text.vertical_text("patchlens-sup vs patchlens-dino", face, 80)
    lines = text.wrap("patchlens-sup vs patchlens-dino", face, 80)
    assert len(lines) > 1 and picture.size == (len(lines) * text.line_height(face), 80)
    pixels = np.asarray(picture)
    assert (pixels < 128).any()  # ink on it


@pytest.mark.parametrize("low, high, count, expected", [
    (0.0, 1.0, 5, [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]),
    (0.0, 1.0, 2, [0.0, 0.5, 1.0]),
    (0.3, 0.3, 5, [-0.2, 0.0, 0.2, 0.4, 0.6, 0.8]),  # an empty range is widened by 0.5 on each side
    (float("nan"), 1.0, 5, [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]),
    (2.0, 7.0, 5, [2.0, 3.0, 4.0, 5.0, 6.0, 7.0]),
    (-3.0, 3.0, 4, [-4.0, -2.0, 0.0, 2.0, 4.0]),
])
def test_nice_ticks_cover_the_range_with_the_finest_round_step(low, high, count, expected):
    assert text.nice_ticks(low, high, count) == pytest.approx(expected)


def test_tick_texts_use_the_decimals_of_the_step():
    assert text.tick_texts([0.0, 0.25, 0.5]) == ["0.00", "0.25", "0.50"]
    assert text.tick_texts([-0.0, 10.0, 20.0]) == ["0", "10", "20"]
    assert text.tick_texts([0.001, 0.002]) == ["0.001", "0.002"]
    assert text.tick_texts([0.5]) == ["0.5"]
