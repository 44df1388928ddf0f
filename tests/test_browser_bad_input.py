"""Bad input in a real browser: each reaches the user as a clear message, and the app keeps serving."""
from __future__ import annotations

import os

import pytest
import torch
from browser import LiveApp, close_toasts, image_from_element, open_app, requires_browser, screenshot
from PIL import Image

pytestmark = [pytest.mark.browser, requires_browser]


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch /tmp/patchlens-browser-pwned",))


def expect_message(page, text: str, timeout_ms: int = 120_000) -> None:
    page.get_by_text(text, exact=False).first.wait_for(state="visible", timeout=timeout_ms)


def test_bad_inputs_get_clear_messages_and_the_app_keeps_serving(tmp_path, image_file):
    from playwright.sync_api import sync_playwright
    from safetensors.torch import save_file

    from ssl_core.features.encoder import build_model
    from ssl_core.models.registry import resolve_spec

    allowed = tmp_path / "allowed"
    allowed.mkdir()
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 200)
    bomb = tmp_path / "bomb.png"
    Image.new("1", (12_000, 12_000)).save(bomb)
    wrong = tmp_path / "wrong.safetensors"
    other, _ = build_model(resolve_spec("vit_tiny_patch16_224"))  # another architecture, 11 MB in float16
    save_file({k: v.half().contiguous() for k, v in other.state_dict().items()}, str(wrong))
    evil = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.zeros(2)}, "payload": _Payload()}, evil)
    outside = tmp_path / "outside.safetensors"
    outside.write_bytes(b"x")
    good = image_file("good.png", 100, 140, seed=11)
    if os.path.exists("/tmp/patchlens-browser-pwned"):
        os.remove("/tmp/patchlens-browser-pwned")

    with LiveApp("--model", "random-tiny", "--allow-dir", str(allowed)) as app, sync_playwright() as p:
        page = open_app(p, app, 1400, 1100)

        # corrupt and huge images: skipped with their reasons, the good one kept
        page.locator("#uploads input[type=file]").set_input_files([str(corrupt), str(bomb), good])
        expect_message(page, "1 image(s) loaded")
        status = page.locator("#image-status").inner_text()
        assert "corrupt.png" in status and "corrupt image data" in status
        assert "bomb.png" in status and "too many pixels" in status
        image_from_element(page, "#inspect-pca")

        # a checkpoint of another architecture, and a pickled payload: refused by name
        page.get_by_text("Weights and resolution").click()
        weights = page.locator("#weights-upload input[type=file]")
        weights.set_input_files(str(wrong))
        expect_message(page, "was trained with 16-pixel patches")
        close_toasts(page)
        weights.wait_for(state="attached")  # the refused file is taken off again: the upload box is empty
        weights.set_input_files(str(evil))
        expect_message(page, "pickled Python objects")
        assert not os.path.exists("/tmp/patchlens-browser-pwned")
        close_toasts(page)
        weights.wait_for(state="attached")

        # a weights path and a gallery folder outside the allowed folders
        path_box = page.get_by_label("…or a weights path on the server (under --allow-dir)")
        path_box.fill(str(outside))
        path_box.press("Enter")
        expect_message(page, "outside the allowed folders")
        close_toasts(page)
        screenshot(page, "bad-input")

        # the app still serves: a fresh session works end to end
        fresh = page.context.browser.new_page(viewport={"width": 1400, "height": 1100})
        fresh.goto(app.url)
        fresh.locator("#uploads input[type=file]").set_input_files(good)
        assert image_from_element(fresh, "#inspect-pca").std() > 5
        page.context.browser.close()
    assert "unexpected error" not in app.output()  # every refusal above was an expected, explained one
