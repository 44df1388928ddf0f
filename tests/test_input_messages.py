"""What PatchLens says about files that are not what they claim: weights that are no checkpoint, decompression bombs."""
from __future__ import annotations

import io
import os
import random

import pytest
import torch
from PIL import Image

from ssl_core.data.images import load_image
from ssl_core.errors import CheckpointError, ImageLoadError
from ssl_core.models.weights import read_state_dict


class _Payload:
    def __reduce__(self):
        return (os.getcwd, ())


def _tiff_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="TIFF")
    return buffer.getvalue()


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_weights_that_are_no_checkpoint_say_what_they_are(tmp_path, suffix):
    cases = {"random": (b"\x07" + random.Random(0).randbytes(2047),
                        r"not a checkpoint: unrecognised bytes \(it starts with [0-9a-f ]+\)"),
             "tiff": (_tiff_bytes(), "not a checkpoint: it starts like a TIFF image"),
             "text": (b"model weights: see the README\n" * 10, "not a checkpoint: it is text, not tensors")}
    for name, (data, message) in cases.items():
        path = tmp_path / f"{name}{suffix}"
        path.write_bytes(data)
        with pytest.raises(CheckpointError, match=message) as err:
            read_state_dict(path)
        assert "pickled" not in str(err.value)


def test_only_a_real_pickle_with_forbidden_globals_is_called_pickled_objects(tmp_path):
    evil = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.zeros(2)}, "payload": _Payload()}, evil)
    with pytest.raises(CheckpointError, match="pickled Python objects, which are not loaded for safety"):
        read_state_dict(evil)
    cut = tmp_path / "cut.pth"
    buffer = io.BytesIO()
    torch.save({"w": torch.zeros(64)}, buffer)
    cut.write_bytes(buffer.getvalue()[:300])
    with pytest.raises(CheckpointError, match="damaged or not a PyTorch checkpoint") as err:
        read_state_dict(cut)
    assert "pickled" not in str(err.value)


def test_decompression_bomb_message_cites_the_patchlens_limit(tmp_path):
    for width, height in [(12_000, 12_000), (20_000, 10_000)]:  # over PIL's warning, and over PIL's error limit
        path = tmp_path / f"bomb{width}.png"
        Image.new("1", (width, height)).save(path)
        with pytest.raises(ImageLoadError) as err:
            load_image(path)
        message = str(err.value)
        assert f"too many pixels: {width * height:,} is over the limit of 64,000,000" in message
        assert "89478485" not in message and "178956970" not in message and "DOS" not in message
