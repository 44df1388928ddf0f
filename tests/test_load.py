"""A burst against the live app on 127.0.0.1: every answer arrives, belongs to its request, memory settles."""
from __future__ import annotations

import base64
import hashlib
import io
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import psutil
import pytest
from browser import LiveApp
from PIL import Image

CLIENTS, REQUESTS_PER_CLIENT = 5, 4


def _png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (48 + seed % 5 * 8, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _rss_mb(pid: int) -> float:
    process = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [process, *process.children(recursive=True)]) / 2**20


@pytest.mark.slow
def test_burst_of_20_requests_from_5_clients_is_all_answered_correctly():
    from gradio_client import Client

    from ssl_core import load_encoder

    reference = load_encoder("random-tiny", cache=None)
    with LiveApp("--model", "random-tiny", "--concurrency", "2", "--cache-mb", "32",
                 env={"PATCHLENS_UMAP_WARM_UP": "0"}) as app:  # memory measured is the requests', not numba's
        clients = [Client(app.url, verbose=False) for _ in range(CLIENTS)]

        def ask(client_index: int, seed: int) -> tuple[int, bytes, dict]:
            data = _png(seed)
            answer = clients[client_index].predict(image_base64=base64.b64encode(data).decode(), model="random-tiny",
                                                   layer=-1, api_name="/patch_features")
            return seed, data, answer

        ask(0, 999)  # warm-up: the model is loaded once
        baseline = _rss_mb(app.process.pid)
        jobs = [(c, 100 + c * REQUESTS_PER_CLIENT + r) for c in range(CLIENTS) for r in range(REQUESTS_PER_CLIENT)]
        start = time.monotonic()
        with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
            results = list(pool.map(lambda job: ask(*job), jobs))
        elapsed = time.monotonic() - start
        time.sleep(1.0)
        after = _rss_mb(app.process.pid)

    assert len(results) == CLIENTS * REQUESTS_PER_CLIENT and elapsed < 180
    for seed, data, answer in results:
        assert answer["bytes_blake2b"] == hashlib.blake2b(data, digest_size=16).hexdigest()
        [features] = reference.extract([Image.open(io.BytesIO(data))])
        assert answer["grid_hw"] == list(features.grid_hw)
        expected = features.patch_tokens.reshape(-1, features.patch_tokens.shape[-1]).mean(0).numpy()
        np.testing.assert_allclose(answer["mean_token"], expected, atol=1e-4)
    assert after - baseline < 150, f"server memory grew from {baseline:.0f} MB to {after:.0f} MB"
