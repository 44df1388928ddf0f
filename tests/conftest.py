"""Shared fixtures. Tests never touch the network: the Hugging Face Hub is put in offline mode."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

torch.set_num_threads(1)  # small models; two threads on a shared 2-core machine can be many times slower


def smooth_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth random colour image [H, W, 3] uint8 (gradients and blobs: not white noise)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    channels = []
    for _ in range(3):
        a, b, c = rng.uniform(-3, 3, 3)
        channels.append(np.sin(a * xx * 6 + b * yy * 6 + c))
    image = (np.stack(channels, -1) * 0.5 + 0.5) * 255
    return image.clip(0, 255).astype(np.uint8)


@pytest.fixture
def one_torch_thread():
    """One torch thread for the test, whatever an earlier test set (training: two threads that wait on each other
    run ~25x slower on a shared 2-core machine); the earlier count is put back after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def image_333x517() -> np.ndarray:
    return smooth_image(333, 517, seed=1)


@pytest.fixture(scope="session")
def tiny_encoder():
    from ssl_core import load_encoder

    return load_encoder("random-tiny", device="cpu", cache=None)


@pytest.fixture
def image_file(tmp_path):
    def make(name: str = "img.png", height: int = 64, width: int = 96, seed: int = 0) -> str:
        path = tmp_path / name
        Image.fromarray(smooth_image(height, width, seed)).save(path)
        return str(path)
    return make
