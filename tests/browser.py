"""Driving the real app in headless Chromium (Debian's package; no browser download).

`LiveApp` starts ``patchlens serve`` in a subprocess on a free local port; `browser_page` opens it in
Chromium through Playwright. Tests using them skip, saying why, where Chromium or Playwright is missing.
"""
from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CHROMIUM = os.environ.get("PATCHLENS_CHROMIUM", shutil.which("chromium") or "/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
ARTIFACTS = Path(__file__).parent / "artifacts"


def browser_skip_reason() -> str | None:
    if not Path(CHROMIUM).exists():
        return f"no Chromium at {CHROMIUM} (install Debian's chromium and chromium-driver packages)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[dev]')"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveApp:
    """``patchlens serve`` in a subprocess, for the duration of a with-block."""

    def __init__(self, *args: str, env: dict | None = None, start_timeout_s: float = 120):
        self.start_timeout_s = start_timeout_s
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.args = args
        self.env = env or {}
        self.log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)

    def __enter__(self) -> "LiveApp":
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False",
               "GRADIO_TEMP_DIR": tempfile.mkdtemp(prefix="patchlens-test-uploads-"), **self.env}
        self.process = subprocess.Popen([sys.executable, "-m", "app.cli.main", "serve", "--port", str(self.port), *self.args],
                                        stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the app exited early:\n{self.output()}")
            try:
                with urllib.request.urlopen(self.url, timeout=2) as response:
                    if response.status == 200:
                        return self
            except OSError:
                time.sleep(0.5)
        self.__exit__()
        raise RuntimeError(f"the app did not start within {self.start_timeout_s:g} s:\n{self.output()}")

    def output(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text()

    def __exit__(self, *exc) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()


def open_browser(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS,
                                      headless=True)


def open_app(playwright, app: LiveApp, width: int = 1400, height: int = 1100, **context):
    """A headless Chromium page showing the running app."""
    page = open_browser(playwright).new_page(viewport={"width": width, "height": height}, **context)
    page.goto(app.url)
    return page


def image_from_element(page, selector: str, timeout_ms: int = 120_000) -> np.ndarray:
    """The picture an <img> inside ``selector`` shows, fetched by the browser and decoded. The picture is scrolled to
    first: the browser lazy-loads pictures far below the viewport, which stay 0 px high (hidden) until then."""
    img = page.locator(f"{selector} img").first
    img.wait_for(state="attached", timeout=timeout_ms)
    img.evaluate("element => element.scrollIntoView({block: 'center'})")
    img.wait_for(state="visible", timeout=timeout_ms)
    src = img.get_attribute("src")
    response = page.request.get(src if src.startswith("http") else page.url.rstrip("/") + "/" + src.lstrip("/"))
    assert response.ok, f"could not fetch {src}: {response.status}"
    return np.asarray(Image.open(io.BytesIO(response.body())).convert("RGB"))


def wait_for_new_image(page, selector: str, previous_src: str | None, timeout_ms: int = 120_000) -> None:
    """Wait until the <img> inside ``selector`` shows a different picture than ``previous_src``."""
    page.wait_for_function(
        "([sel, prev]) => { const i = document.querySelector(sel + ' img'); return i && i.src && i.src !== prev; }",
        arg=[selector, previous_src or ""], timeout=timeout_ms)


def src_of(page, selector: str) -> str | None:
    img = page.locator(f"{selector} img")
    return img.first.get_attribute("src") if img.count() else None


def wait_for_text(page, selector: str, pattern: str, timeout_ms: int = 120_000, other_than: str = "",
                  app: LiveApp | None = None) -> str:
    """The text of ``selector`` once its event has answered (no status tracker shown) and the text matches the
    regular expression ``pattern`` (and differs from ``other_than``). On a timeout the test fails saying what the
    element showed instead, the messages the app showed and (given ``app``) the end of the server's log."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        handle = page.wait_for_function(
            "([sel, pat, old]) => { const e = document.querySelector(sel); if (!e) return false;"
            " const s = e.querySelector('[data-testid=status-tracker]'); if (s && !s.classList.contains('hide'))"
            " return false; const t = e.innerText; return t !== old && new RegExp(pat).test(t) ? t : false; }",
            arg=[selector, pattern, other_than], timeout=timeout_ms)
    except PlaywrightTimeout:
        shown = page.locator(selector).first.inner_text() if page.locator(selector).count() else "(no such element)"
        messages = toasts(page)
        log = app.output()[-3000:] if app is not None else ""
        pytest.fail(f"{selector} did not show /{pattern}/ within {timeout_ms / 1000:g} s; it showed {shown!r}; "
                    f"messages: {messages}\n{log}")
    return handle.json_value()


def toasts(page) -> str:
    """The text of the messages (toasts) on the page now, one per line."""
    return "\n".join(t.inner_text() for t in page.locator(".toast-body").all())


def wait_for_toast(page, pattern: str, timeout_ms: int = 30_000) -> str:
    """The text of the first message matching the regular expression ``pattern`` (any case), read in the same step
    that found it, so a message that closes meanwhile cannot leave the answer empty."""
    handle = page.wait_for_function(
        "(pat) => { const t = Array.from(document.querySelectorAll('.toast-body')).map(e => e.innerText)"
        ".find(s => new RegExp(pat, 'i').test(s)); return t === undefined ? false : t; }",
        arg=pattern, timeout=timeout_ms)
    return handle.json_value()


def close_toasts(page, timeout_ms: int = 10_000) -> None:
    """Close every message shown, one at a time (closing one renumbers the others), and wait until they have left
    the page: a message still fading out would otherwise answer the next `wait_for_toast`."""
    buttons = page.locator(".toast-close")
    for _ in range(10):
        if buttons.count() == 0 or not buttons.first.is_visible():
            break
        try:
            buttons.first.click(timeout=5_000)
        except Exception:  # noqa: BLE001  (it closed by itself meanwhile)
            pass
    page.wait_for_function("() => document.querySelectorAll('.toast-body').length === 0", timeout=timeout_ms)


def screenshot(page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


_skip_reason = browser_skip_reason()
if _skip_reason and os.environ.get("PATCHLENS_REQUIRE_BROWSER") == "1":
    raise RuntimeError(f"browser tests are required here (PATCHLENS_REQUIRE_BROWSER=1) but {_skip_reason}")
requires_browser = pytest.mark.skipif(_skip_reason is not None, reason=str(_skip_reason))


def gallery_srcs(page, selector: str) -> list[str]:
    return [img.get_attribute("src") for img in page.locator(f"{selector} img").all()]


def wait_for_gallery_change(page, selector: str, previous: list[str], count: int,
                            timeout_ms: int = 120_000) -> list[str]:
    """Wait until a gallery shows ``count`` pictures that differ from ``previous``; returns their srcs."""
    page.wait_for_function(
        """([sel, prev, n]) => {
            const srcs = Array.from(document.querySelectorAll(sel + ' img')).map(i => i.src);
            return srcs.length === n && srcs.every(s => s) && JSON.stringify(srcs) !== JSON.stringify(prev);
        }""", arg=[selector, [page.url.rstrip('/') + '/' + s.lstrip('/') if s and not s.startswith('http') else s
                              for s in previous], count], timeout=timeout_ms)
    return gallery_srcs(page, selector)


def build_index_and_search(page, x_fraction: float, hits: int = 8) -> list[str]:
    """On the Gallery tab: index the loaded images, click the query image at ``x_fraction`` of its width (half
    height), and wait for the nearest-patch pictures; returns their srcs."""
    page.get_by_role("tab", name="Gallery").click()
    page.locator("#gallery-build").click()
    wait_for_text(page, "#index-info", "patches", 120_000)
    query = image_from_element(page, "#gallery-query")
    page.locator("#gallery-query img").first.click(
        position={"x": int(query.shape[1] * x_fraction), "y": query.shape[0] // 2})
    return wait_for_gallery_change(page, "#gallery-hits", [], hits)


def fetch_image(page, src: str) -> np.ndarray:
    response = page.request.get(src if src.startswith("http") else page.url.rstrip("/") + "/" + src.lstrip("/"))
    assert response.ok, f"could not fetch {src}: {response.status}"
    return np.asarray(Image.open(io.BytesIO(response.body())).convert("RGB"))


BAR_WIDTH = 100  # the colour bar PatchLens adds to the right of a map (ssl_core.render.draw.COLORBAR_WIDTH)


def colorbar_columns(picture: np.ndarray, cmap: str) -> list[int]:
    """The x of every pixel column of a picture [H, W, 3] that is a colour bar of ``cmap``: most of its pixels are
    exact colours of the colormap, running from its top colour (at the top) down to its bottom colour."""
    from ssl_core.render.draw import colormap_lut

    lut = colormap_lut(cmap).astype(np.int64)
    found = []
    for x in range(picture.shape[1]):
        column = picture[:, x].astype(np.int64)
        distance = ((column[:, None, :] - lut[None]) ** 2).sum(-1)  # [H, 256]
        ys = np.flatnonzero(distance.min(1) == 0)
        if len(ys) < 0.6 * picture.shape[0]:
            continue
        levels = distance.argmin(1)[ys]
        if levels[0] >= 250 and levels[-1] <= 5 and (np.diff(levels) <= 0).all():
            found.append(x)
    return found


def bars(picture: np.ndarray, cmap: str) -> int:
    """How many separate colour bars of ``cmap`` a picture holds."""
    columns = colorbar_columns(picture, cmap)
    return sum(1 for i, x in enumerate(columns) if i == 0 or x != columns[i - 1] + 1)


def hover_readout(page, selector: str, timeout_ms: int = 60_000) -> str:
    """Hover the middle of the first heatmap of the plotly readout in ``selector``; the hover label's text."""
    plot = page.locator(f"{selector} .js-plotly-plot").first
    plot.wait_for(state="visible", timeout=timeout_ms)
    plot.scroll_into_view_if_needed()
    layer = page.locator(f"{selector} .nsewdrag").first
    box = layer.bounding_box()
    page.mouse.move(box["x"] + 2, box["y"] + 2)
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2, steps=4)
    label = page.locator(f"{selector} .hoverlayer .hovertext").first
    label.wait_for(state="attached", timeout=10_000)
    return label.text_content()


def plot_data(page, selector: str) -> list[dict]:
    """The traces of the plotly figure in ``selector`` (what plotly holds, after rendering)."""
    return page.evaluate(
        "sel => Array.from(document.querySelector(sel + ' .js-plotly-plot').data)"
        ".map(t => ({zmin: t.zmin, zmax: t.zmax, colorscale: t.colorscale, hovertemplate: t.hovertemplate}))",
        selector)


def file_name(page, selector: str, timeout_ms: int = 120_000) -> str:
    """The name of the file a ``gr.File`` in ``selector`` offers."""
    link = page.locator(f"{selector} a").first
    link.wait_for(state="attached", timeout=timeout_ms)
    return link.get_attribute("download") or link.inner_text()


def choose_models(page, keep: list[str], add: list[str]) -> None:
    """Leave only ``keep`` among the Lab's chosen encoders, then add ``add`` (in that order)."""
    tokens = page.locator("#lab-models .token")
    for i in reversed(range(tokens.count())):
        token = tokens.nth(i)
        shown = token.inner_text().strip().split(" · ")[-1]  # tokens show "family · name"
        if not any(shown.startswith(name) for name in keep):
            token.locator(".token-remove").click()
    chooser = page.locator("#lab-models input")
    for name in add:
        chooser.click()
        chooser.fill(name)
        chooser.press("Enter")
    page.keyboard.press("Escape")


def run_lab(page, measure: str, expect: str) -> str:
    """Run a Lab measure; its result's text once it shows ``expect`` and no progress."""
    page.locator("#lab-probe input").click()
    page.locator("#lab-probe input").fill(measure)
    page.locator("#lab-probe input").press("Enter")
    page.locator("#lab-run").click()
    page.wait_for_function("want => { const t = document.querySelector('#lab-result').innerText; "
                           "return t.includes(want) && !t.includes('processing'); }", arg=expect, timeout=400_000)
    return page.locator("#lab-result").inner_text()
