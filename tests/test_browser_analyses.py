"""The patch analyses in a real browser: click a patch, change k, run BagSSL."""
from __future__ import annotations

import numpy as np
import pytest
from browser import (
    LiveApp,
    fetch_image,
    image_from_element,
    open_app,
    requires_browser,
    screenshot,
    wait_for_gallery_change,
)

pytestmark = [pytest.mark.browser, requires_browser]


def test_click_changes_similarity_of_both_images_k_changes_parts_and_bagssl_plots(image_file):
    from playwright.sync_api import sync_playwright

    first = image_file("first.png", 120, 180, seed=4)
    second = image_file("second.png", 150, 150, seed=5)
    with LiveApp("--model", "random-tiny") as app, sync_playwright() as p:
        page = open_app(p, app, 1400, 1100)
        page.locator("#uploads input[type=file]").set_input_files([first, second])
        image_from_element(page, "#inspect-image")

        # click a patch: both images get a similarity overlay
        page.get_by_role("tab", name="Similarity").click()
        shown = page.locator("#inspect-image img").first
        shown.click(position={"x": 20, "y": 20})
        before = wait_for_gallery_change(page, "#similarity-gallery", [], 2)
        pictures_before = [fetch_image(page, s) for s in before]
        shown.click(position={"x": 250, "y": 200})
        after = wait_for_gallery_change(page, "#similarity-gallery", before, 2)
        pictures_after = [fetch_image(page, s) for s in after]
        for old, new in zip(pictures_before, pictures_after):
            assert old.shape == new.shape and np.abs(old.astype(int) - new.astype(int)).mean() > 1
        screenshot(page, "similarity")

        # pick k: the part maps change
        page.get_by_role("tab", name="Parts").click()
        parts_before = wait_for_gallery_change(page, "#parts-gallery", [], 2)
        k_box = page.locator("#parts-k input[type=number]")
        k_box.fill("2")
        k_box.press("Enter")
        parts_after = wait_for_gallery_change(page, "#parts-gallery", parts_before, 2)
        colours = [len(np.unique(fetch_image(page, s).reshape(-1, 3), axis=0)) for s in parts_after]
        assert all(c > 1 for c in colours)
        screenshot(page, "parts")

        # BagSSL renders its plots
        page.get_by_role("tab", name="BagSSL").click()
        page.locator("#bagssl-run").click()
        page.locator("#bagssl-crops .js-plotly-plot").wait_for(timeout=90_000)
        page.locator("#bagssl-layers .js-plotly-plot").wait_for(timeout=10_000)
        assert "cosine" in page.locator("#bagssl-info").inner_text()
        screenshot(page, "bagssl")
        page.context.browser.close()
