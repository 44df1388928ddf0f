"""The Inspect view in a real browser: upload an image, read back the rendered maps."""
from __future__ import annotations

import numpy as np
import pytest
from browser import LiveApp, image_from_element, open_app, requires_browser, screenshot
from PIL import Image

pytestmark = [pytest.mark.browser, requires_browser]


def test_upload_an_image_and_read_back_the_maps(image_file, tmp_path):
    from playwright.sync_api import sync_playwright

    path = image_file("photo.png", 150, 230, seed=3)
    with LiveApp("--model", "random-tiny") as app, sync_playwright() as p:
        page = open_app(p, app, 1400, 1000)
        page.locator("#uploads input[type=file]").set_input_files(path)
        pca = image_from_element(page, "#inspect-pca")
        shown = image_from_element(page, "#inspect-image")
        attention = image_from_element(page, "#inspect-attention")
        assert "untrained" in page.locator("#model-info").inner_text().lower()
        screenshot(page, "inspect")
        page.context.browser.close()

    # the browser shows exactly what the handler computes for this image
    from app.views.inspect import overview
    from ssl_core import load_encoder
    expected = overview(load_encoder("random-tiny", cache=None), Image.open(path).convert("RGB")).pictures
    assert shown.shape == pca.shape == expected["pca"].shape and attention.shape == expected["attention"].shape
    np.testing.assert_array_equal(pca, expected["pca"])
    np.testing.assert_array_equal(attention, expected["attention"])
    assert pca.std() > 5
