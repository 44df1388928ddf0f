"""Readable maps in a real browser: every scalar map has a colour bar and a hover readout, the patch grid can be
drawn, pictures download under names that say what they are, every view offers its numbers as .npz, and a reload
keeps the loaded images and choices."""
from __future__ import annotations

import re

import numpy as np
import pytest
from browser import (
    BAR_WIDTH,
    LiveApp,
    bars,
    build_index_and_search,
    fetch_image,
    file_name,
    gallery_srcs,
    hover_readout,
    image_from_element,
    open_app,
    plot_data,
    requires_browser,
    screenshot,
    src_of,
    wait_for_gallery_change,
    wait_for_new_image,
    wait_for_text,
)

pytestmark = [pytest.mark.browser, requires_browser]
READOUT = re.compile(r"row \d+, col \d+: -?\d+\.\d{3}")
NO_WARM_UP = {"PATCHLENS_UMAP_WARM_UP": "0"}  # these tests draw no UMAP: leave the CPU to them


def assert_map(page, selector: str, cmap: str, readout: str | None) -> None:
    """The picture in ``selector`` has a colour bar of ``cmap`` on its right; the readout plot reads a patch."""
    picture = image_from_element(page, selector)
    assert bars(picture[:, -BAR_WIDTH:], cmap) == 1, f"no {cmap} colour bar in {selector}"
    if readout:
        assert READOUT.search(hover_readout(page, readout)), f"no row/col/value readout in {readout}"


def test_every_map_has_a_colour_bar_and_a_hover_readout(image_file):
    from playwright.sync_api import sync_playwright

    first = image_file("first.png", 120, 180, seed=4)
    second = image_file("second.png", 150, 150, seed=5)
    with LiveApp("--model", "random-tiny", env=NO_WARM_UP) as app, sync_playwright() as p:
        page = open_app(p, app, 1500, 1100)
        page.locator("#uploads input[type=file]").set_input_files([first, second])
        assert_map(page, "#inspect-attention", "inferno", "#inspect-readout")

        page.get_by_role("tab", name="Similarity").click()
        page.locator("#inspect-image img").first.click(position={"x": 30, "y": 30})
        for src in wait_for_gallery_change(page, "#similarity-gallery", [], 2):
            assert bars(fetch_image(page, src)[:, -BAR_WIDTH:], "inferno") == 1
        assert READOUT.search(hover_readout(page, "#similarity-readout"))

        page.get_by_role("tab", name="Attention").click()
        assert_map(page, "#attention-map", "inferno", "#attention-readout")
        assert_map(page, "#token-norm", "viridis", None)
        for src in gallery_srcs(page, "#attention-heads"):
            assert bars(fetch_image(page, src)[:, -BAR_WIDTH:], "inferno") == 1
        page.locator("#attention-range .js-plotly-plot").wait_for(state="visible", timeout=60_000)
        assert len(plot_data(page, "#attention-range")) == 4  # 2 panels: a line and a dot per head

        page.get_by_role("tab", name="BagSSL").click()
        page.locator("#bagssl-run").click()
        assert_map(page, "#bagssl-map", "viridis", "#bagssl-readout")

        # the patch grid: lines along the patch boundaries of the maps
        before = image_from_element(page, "#inspect-attention")
        previous = src_of(page, "#inspect-attention")
        page.locator("#patch-grid input").check()
        wait_for_new_image(page, "#inspect-attention", previous)
        after = image_from_element(page, "#inspect-attention")
        step = after.shape[0] // 12  # random-tiny sees first.png as 12 x 18 patches
        lines = after[step * np.arange(1, 12)][:, :-BAR_WIDTH].astype(int)
        assert (lines - before[step * np.arange(1, 12)][:, :-BAR_WIDTH]).mean() > 20  # lighter lines
        page.locator("#patch-grid input").uncheck()

        page.get_by_role("tab", name="Reconstruct").click()
        assert_map(page, "#rec-error", "inferno", "#rec-readout")
        assert_map(page, "#drift-map", "viridis", "#drift-readout")
        assert_map(page, "#cae-map", "viridis", "#cae-readout")
        assert_map(page, "#positions-map", "inferno", "#positions-readout")
        assert file_name(page, "#rec-export").endswith(".npz")

        page.get_by_role("tab", name="Compare").click()
        chooser = page.locator("#compare-models input")
        chooser.click()
        chooser.fill("patchlens-sup")
        chooser.press("Enter")
        page.locator("#compare-run").click()
        for row, cmap in (("similarity", "inferno"), ("attention", "inferno"), ("rollout", "inferno"),
                          ("patch", "viridis")):
            assert bars(image_from_element(page, f"#compare-{row}"), cmap) == 2, row  # one per column
        assert READOUT.search(hover_readout(page, "#compare-readout"))
        page.locator("#compare-attention-range .js-plotly-plot").wait_for(state="visible", timeout=60_000)
        assert len(plot_data(page, "#compare-attention-range")) == 8  # 2 encoders x 2 panels: a line, a dot per head
        assert file_name(page, "#compare-export").endswith(".npz")
        screenshot(page, "maps-compare")
        page.context.browser.close()
    assert "unexpected error" not in app.output()


def test_named_downloads_numbers_everywhere_and_a_reload_keeps_the_images(image_file, tmp_path):
    from playwright.sync_api import sync_playwright

    first = image_file("my photo.png", 120, 180, seed=4)
    second = image_file("rocket.png", 150, 150, seed=5)
    with LiveApp("--model", "random-tiny", env=NO_WARM_UP) as app, sync_playwright() as p:
        page = open_app(p, app, 1500, 1100, accept_downloads=True)
        page.locator("#uploads input[type=file]").set_input_files([first, second])
        image_from_element(page, "#inspect-attention")
        # the image shown is the last one added; its pictures are named model_view_image_picture.png
        assert page.locator("#inspect-attention a[download]").first.get_attribute("download") == \
            "random-tiny_overview_rocket_attention.png"
        page.locator("#inspect-attention").hover()
        with page.expect_download() as download:
            page.locator("#inspect-attention a[download]").first.click()
        assert download.value.suggested_filename == "random-tiny_overview_rocket_attention.png"
        assert file_name(page, "#overview-export") == "random-tiny_overview_rocket.npz"

        # the gallery: hits captioned with the user's file names, their numbers, the map's and CKA's numbers
        build_index_and_search(page, 1 / 2)
        captions = page.locator("#gallery-hits").inner_text()
        assert "rocket.png" in captions or "my photo.png" in captions
        assert not re.search(r"\d{4}_", captions)  # no renamed copies (0001_rocket.png)
        assert file_name(page, "#gallery-hits-export").endswith(".npz")
        page.get_by_label("pca", exact=True).check()
        page.locator("#map-run").click()
        image_from_element(page, "#map-picture")
        assert file_name(page, "#map-export") == "random-tiny_pca-map.npz"
        page.locator("#cka-run").click()
        assert file_name(page, "#cka-export").endswith(".npz")

        # a reload keeps the loaded images, the image shown and the model
        page.locator("#inspect-image-choice input").fill("my photo.png")
        page.locator("#inspect-image-choice input").press("Enter")
        page.wait_for_function(
            "() => document.querySelector('#inspect-attention a[download]')?.download.includes('my-photo')",
            timeout=60_000)
        page.reload()
        wait_for_text(page, "#image-status", "restored", 60_000, app=app)
        assert "2 image(s)" in page.locator("#image-status").inner_text()
        assert page.locator("#inspect-image-choice input").input_value() == "my photo.png"
        image_from_element(page, "#inspect-attention")
        page.wait_for_function(
            "() => document.querySelector('#inspect-attention a[download]')?.download.includes('my-photo')",
            timeout=60_000)
        screenshot(page, "maps-reload")
        page.context.browser.close()
    assert "unexpected error" not in app.output()
