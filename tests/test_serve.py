"""`patchlens serve` starts however busy the machine is: no timed self-check can abort it (see app/ui/server.py)."""
from __future__ import annotations

import base64
import io
import multiprocessing
import socket
import time
import urllib.request

import numpy as np
import pytest
from browser import LiveApp, free_port
from PIL import Image

from ssl_core.system import usable_cores


def _answers(url: str) -> int:
    with urllib.request.urlopen(url, timeout=60) as response:
        return response.status


def _wait_closed(port: int, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) != 0:
                return
        time.sleep(0.2)


def test_serve_comes_up_when_gradios_self_check_fails(monkeypatch, tmp_path):
    import gradio.networking

    from app.ui.app import serve

    # After starting its server, Gradio's launch() HEADs its own URL with a 3-s timeout and aborts when that fails
    # ("When localhost is not accessible, a shareable link must be created"), as it does on a loaded machine: make
    # that check fail every time.
    calls = []
    monkeypatch.setattr(gradio.networking, "url_ok", lambda url: calls.append(url) or False)
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "uploads"))
    port = free_port()
    demo = serve(model="random-tiny", port=port, block=False)
    try:
        assert _answers(f"http://127.0.0.1:{port}/") == 200
        assert _answers(f"http://127.0.0.1:{port}/gradio_api/info") == 200
        assert demo.server_name == "127.0.0.1" and calls == []  # this machine only, by default; no 3-s check
    finally:
        demo.close()
        _wait_closed(port)


def _burn(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


@pytest.mark.slow
def test_serve_starts_and_answers_while_every_core_is_busy():
    from gradio_client import Client

    cores = usable_cores()
    burners = [multiprocessing.Process(target=_burn, args=(900,), daemon=True) for _ in range(2 * cores)]
    for burner in burners:
        burner.start()
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 80, 3), dtype=np.uint8)).save(buffer, "PNG")
    try:
        with LiveApp("--model", "random-tiny", start_timeout_s=600) as app:  # slow to start, but it must start
            client = Client(app.url, verbose=False, httpx_kwargs={"timeout": 300})  # httpx's 5 s: too short here
            answer = client.predict(
                image_base64=base64.b64encode(buffer.getvalue()).decode(), model="random-tiny", layer=-1,
                api_name="/patch_features")
            output = app.output()
    finally:
        for burner in burners:
            burner.terminate()
            burner.join()
    assert len(answer["grid_hw"]) == 2 and "shareable link" not in output


def test_serve_command_refuses_an_unknown_model_or_a_missing_folder_before_starting(monkeypatch, tmp_path, capsys):
    """A model name the registry does not know, and an --allow-dir that is no directory, are refused at start; a
    known hub model starts even offline (the app offers the bundled models then)."""
    import app.ui.app
    from app.cli.main import main

    started = []
    monkeypatch.setattr(app.ui.app, "serve", lambda **kwargs: started.append(kwargs))
    (tmp_path / "file.txt").write_text("x")
    refused = {("--model", "bogus-model"): "unknown model 'bogus-model': not a PatchLens name (patchlens-sup, ",
               ("--allow-dir", str(tmp_path / "missing")): f"--allow-dir {tmp_path / 'missing'}: no such directory",
               ("--allow-dir", str(tmp_path / "file.txt")): f"--allow-dir {tmp_path / 'file.txt'}: not a directory"}
    for args, message in refused.items():
        assert main(["serve", *args]) == 2
        assert message in capsys.readouterr().err
    assert started == []
    assert main(["serve", "--model", "dino-vits16", "--allow-dir", str(tmp_path)]) == 0  # offline in tests
    assert [(s["model"], s["allow_dirs"]) for s in started] == [("dino-vits16", [str(tmp_path)])]
