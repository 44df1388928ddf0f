"""The Reconstruct view in a real browser: ratio and seed give four pictures; two clicks hide two patches."""
from __future__ import annotations

import numpy as np
import pytest
from browser import (
    BAR_WIDTH,
    LiveApp,
    image_from_element,
    open_app,
    requires_browser,
    screenshot,
    src_of,
    wait_for_new_image,
    wait_for_text,
)

pytestmark = [pytest.mark.browser, requires_browser]
GREY = np.array([128, 128, 128])


def hidden_cells(picture: np.ndarray, grid: int) -> set[tuple[int, int]]:
    """Patches of a displayed masked picture filled entirely with the mask grey."""
    step = picture.shape[0] // grid
    cells = set()
    for r in range(grid):
        for c in range(grid):
            block = picture[r * step:(r + 1) * step, c * step:(c + 1) * step].reshape(-1, 3)
            if (block == GREY).all():
                cells.add((r, c))
    return cells


def test_ratio_seed_and_custom_clicks(image_file, tmp_path):
    from playwright.sync_api import sync_playwright

    from ssl_core.mim.mae import build_mae, save_mae
    checkpoint = save_mae(build_mae(), tmp_path / "tiny-mae.safetensors")  # random weights, 12x12 grid
    photo = image_file("photo.png", 140, 180, seed=7)
    with LiveApp("--model", "random-tiny") as app, sync_playwright() as p:
        page = open_app(p, app, 1500, 1100)
        page.locator("#uploads input[type=file]").set_input_files(photo)
        image_from_element(page, "#inspect-image")
        page.get_by_role("tab", name="Reconstruct").click()
        page.locator("#mae-weights input[type=file]").set_input_files(str(checkpoint))
        image_from_element(page, "#rec-masked")

        previous = src_of(page, "#rec-masked")
        ratio = page.locator("#mask-ratio input[type=number]")
        ratio.fill("0.5")
        ratio.press("Enter")
        wait_for_new_image(page, "#rec-masked", previous)
        previous = src_of(page, "#rec-masked")
        seed = page.locator("#mask-seed input")
        seed.fill("3")
        seed.press("Enter")
        wait_for_new_image(page, "#rec-masked", previous)
        pictures = {name: image_from_element(page, f"#rec-{name}") for name in ("masked", "output", "pasted", "error")}
        assert len({pictures[name].shape for name in ("masked", "output", "pasted")}) == 1
        h, w, _ = pictures["masked"].shape
        assert pictures["error"].shape == (h, w + BAR_WIDTH, 3)  # with its colour bar
        from ssl_core.mim.masks import random_mask
        expected = {tuple(map(int, rc)) for rc in np.argwhere(random_mask((12, 12), 0.5, seed=3))}
        assert hidden_cells(pictures["masked"], 12) == expected and len(expected) == 72
        screenshot(page, "reconstruct")

        page.get_by_label("custom").check()  # its (empty) mask shown first: a click while that picture is being
        wait_for_text(page, "#rec-info", "click patches on the masked image")  # replaced could be lost
        masked = page.locator("#rec-masked img").first
        box = masked.bounding_box()
        step = box["width"] / 12
        for row, col in [(2, 3), (7, 9)]:
            previous = src_of(page, "#rec-masked")
            masked.click(position={"x": (col + 0.5) * step, "y": (row + 0.5) * step})
            wait_for_new_image(page, "#rec-masked", previous)
        assert hidden_cells(image_from_element(page, "#rec-masked"), 12) == {(2, 3), (7, 9)}
        screenshot(page, "reconstruct-custom")
        page.context.browser.close()
