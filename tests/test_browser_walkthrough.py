"""Every view of the app in a real browser, on the bundled models: upload, click, compare two encoders,
reconstruct, build a small index and search, run one Lab probe, download a figure. Screenshots of each view
are saved to tests/artifacts/ (the README shows some)."""
from __future__ import annotations

import pytest
from browser import (
    LiveApp,
    build_index_and_search,
    image_from_element,
    open_app,
    requires_browser,
    screenshot,
    src_of,
    wait_for_gallery_change,
    wait_for_new_image,
    wait_for_text,
)
from PIL import Image

from ssl_core.models.registry import bundled_names

pytestmark = [pytest.mark.browser, requires_browser,
              pytest.mark.skipif(not {"patchlens-mae", "patchlens-sup"} <= set(bundled_names()),
                                 reason="the bundled patchlens-mae and patchlens-sup weights are not installed")]


def test_every_view_on_the_bundled_models(tmp_path):
    from playwright.sync_api import sync_playwright

    with LiveApp() as app, sync_playwright() as p:  # the default model: bundled, trained
        page = open_app(p, app, 1500, 1100, accept_downloads=True)
        assert "untrained" not in page.locator("#model-info").inner_text().lower()

        # Inspect: the examples, a click, the similarity of every image
        page.locator("#add-examples").click()
        image_from_element(page, "#inspect-pca")
        first_shown = src_of(page, "#inspect-image")
        page.locator("#inspect-image-choice input").fill("partsworld_1.png")
        page.locator("#inspect-image-choice input").press("Enter")
        wait_for_new_image(page, "#inspect-image", first_shown)  # a click on the picture being replaced is lost
        page.get_by_role("tab", name="Similarity").click()
        page.locator("#inspect-image img").first.click(position={"x": 120, "y": 250})
        wait_for_gallery_change(page, "#similarity-gallery", [], 8)
        screenshot(page, "walkthrough-inspect")
        page.get_by_role("tab", name="Parts").click()
        joint = wait_for_gallery_change(page, "#parts-gallery", [], 8)
        assert "adjusted Rand index" in page.locator("#parts-info").inner_text()  # the examples' parts are known
        page.locator("#parts-separate input").check()
        wait_for_gallery_change(page, "#parts-gallery", joint, 8)
        wait_for_text(page, "#parts-info", "per image")
        page.locator("#parts-position input").check()  # several examples share a 12x12 grid, so centring applies
        wait_for_text(page, "#parts-info", "mean token removed")
        screenshot(page, "walkthrough-parts")

        # Reconstruct with the bundled MAE
        page.get_by_role("tab", name="Reconstruct").click()
        for name in ("masked", "output", "pasted", "error"):
            image_from_element(page, f"#rec-{name}")
        image_from_element(page, "#cae-map")
        image_from_element(page, "#positions-map")  # the default model's wrong positions: a random 15% swapped
        wait_for_text(page, "#positions-info", "ROC AUC")
        screenshot(page, "walkthrough-reconstruct")

        # Compare two bundled encoders, click a spot, download the comparison
        page.get_by_role("tab", name="Compare").click()
        chooser = page.locator("#compare-models input")
        chooser.click()
        chooser.fill("patchlens-mae")
        chooser.press("Enter")
        page.locator("#compare-run").click()
        before = image_from_element(page, "#compare-similarity", timeout_ms=120_000)
        previous = src_of(page, "#compare-similarity")
        shown = image_from_element(page, "#compare-image")
        page.locator("#compare-image img").first.click(position={"x": shown.shape[1] // 4, "y": shown.shape[0] // 4})
        wait_for_new_image(page, "#compare-similarity", previous, timeout_ms=120_000)
        after = image_from_element(page, "#compare-similarity")
        assert before.shape == after.shape and (before != after).any()  # both columns follow the click
        with page.expect_download() as download:
            page.locator("#compare-png a").first.click()
        saved = tmp_path / "comparison.png"
        download.value.save_as(saved)
        assert Image.open(saved).size[0] > 400
        screenshot(page, "walkthrough-compare")

        # Gallery: a small index of the examples, one search
        build_index_and_search(page, 1 / 2)
        screenshot(page, "walkthrough-gallery")

        # Lab: one probe on the chosen encoders
        page.get_by_role("tab", name="Lab").click()
        page.locator("#lab-run").click()
        wait_for_text(page, "#lab-result", "Chance levels", 180_000)
        assert "object" in page.locator("#lab-result").inner_text()
        screenshot(page, "walkthrough-lab")
        page.context.browser.close()
    assert "unexpected error" not in app.output()
