"""Dense features in a real browser: the facet changes the maps, the resolution's difference view shows what
guidance drew, best buddies between two images, and the Lab's layer sweep with one point per block."""
from __future__ import annotations

import re

import numpy as np
import pytest
from browser import (
    BAR_WIDTH,
    LiveApp,
    bars,
    choose_models,
    fetch_image,
    file_name,
    image_from_element,
    open_app,
    requires_browser,
    run_lab,
    screenshot,
    src_of,
    wait_for_gallery_change,
    wait_for_new_image,
    wait_for_text,
)

from ssl_core.render.draw import colormap_lut

pytestmark = [pytest.mark.browser, requires_browser]
TINY_DEPTH = 6  # blocks of random-tiny (patchlens_vit_tiny_p8)
OVERVIEW_ALPHA = 0.7  # the overview's attention overlay (app.views.inspect.overview)


def choose(page, selector: str, value: str) -> None:
    box = page.locator(f"{selector} input")
    box.click()
    box.fill(value)
    box.press("Enter")


def check_facet_and_difference(page) -> None:
    # the facet: the key tokens of the last block give other PCA maps than the final tokens
    page.get_by_role("tab", name="PCA").click()
    before = wait_for_gallery_change(page, "#pca-gallery", [], 2)
    choose(page, "#facet", "key")
    after = wait_for_gallery_change(page, "#pca-gallery", before, 2)
    for old, new in zip(before, after):
        assert np.abs(fetch_image(page, old).astype(int) - fetch_image(page, new).astype(int)).mean() > 2
    wait_for_text(page, "#pca-info", "key of the last block", 60_000)

    # the difference view: not the patch-grid map, and not a zero change (the image under the middle colour)
    raw = image_from_element(page, "#inspect-attention")
    image = image_from_element(page, "#inspect-image")
    previous = src_of(page, "#inspect-attention")
    page.get_by_label("difference: guided − patch grid").check()
    wait_for_new_image(page, "#inspect-attention", previous)
    difference = image_from_element(page, "#inspect-attention")
    assert difference.shape == raw.shape and bars(difference, "RdBu_r") == 1
    zero = image * (1 - OVERVIEW_ALPHA) + colormap_lut("RdBu_r")[128] * OVERVIEW_ALPHA
    assert np.abs(difference[:, :-BAR_WIDTH].astype(float) - zero).mean() > 2
    assert np.abs(difference.astype(int) - raw.astype(int)).mean() > 2
    screenshot(page, "dense-difference")


def check_best_buddies(page) -> None:
    page.get_by_role("tab", name="Best buddies").click()
    page.wait_for_function("() => /best buddies shown/.test(document.querySelector('#buddies-info').innerText)",
                           timeout=120_000)
    image_from_element(page, "#buddies-lines")
    top = page.locator("#buddies-top input[type=number]")
    top.fill("3")
    top.press("Enter")
    page.wait_for_function("() => /\\*?3 best buddies shown/.test(document.querySelector('#buddies-info').innerText)",
                           timeout=120_000)
    text = page.locator("#buddies-info").inner_text()
    assert re.search(r"mean cosine\s+-?\d\.\d{3}", text), text
    screenshot(page, "dense-best-buddies")


def check_layer_sweep(page) -> None:
    page.get_by_role("tab", name="Lab").click()
    choose_models(page, keep=[], add=["random-tiny"])
    page.get_by_label("Scenes to fit on").fill("8")
    page.get_by_label("Scenes to score on").fill("4")
    run_lab(page, "layer sweep", "best block for parts")
    page.locator("#lab-layers .js-plotly-plot").wait_for(timeout=60_000)
    points = page.evaluate("() => Array.from(document.querySelector('#lab-layers .js-plotly-plot').data)"
                           ".map(t => t.x.length)")
    assert points == [TINY_DEPTH] * 6  # part probe, part-map ARI, BagSSL cosine, CKA, attention distance and NMI
    assert file_name(page, "#lab-layers-png").endswith(".png")
    assert file_name(page, "#lab-layers-html").endswith(".html")
    screenshot(page, "dense-layer-sweep")


def test_facet_difference_view_best_buddies_and_layer_sweep(image_file):
    from playwright.sync_api import sync_playwright

    first = image_file("first.png", 120, 180, seed=4)
    second = image_file("second.png", 150, 150, seed=5)
    with LiveApp("--model", "random-tiny", env={"PATCHLENS_UMAP_WARM_UP": "0"}) as app, sync_playwright() as p:
        page = open_app(p, app, 1500, 1100)
        page.locator("#uploads input[type=file]").set_input_files([first, second])
        image_from_element(page, "#inspect-attention")
        check_facet_and_difference(page)
        check_best_buddies(page)
        check_layer_sweep(page)
        page.context.browser.close()
