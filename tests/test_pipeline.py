"""The gallery embedding pipeline: same tokens as the encoder, bucketing, bad files, both decoders."""
from __future__ import annotations

import os

import pytest
import torch
from conftest import smooth_image
from PIL import Image

from ssl_core.features.pipeline import PipelineConfig, embed_files


@pytest.fixture
def gallery(tmp_path):
    paths = []
    for i, (h, w) in enumerate([(96, 96), (120, 80), (96, 96), (200, 300), (96, 96)]):
        path = tmp_path / f"img{i}.{'jpg' if i % 2 else 'png'}"
        Image.fromarray(smooth_image(h, w, seed=i)).save(path, quality=95)
        paths.append(str(path))
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 50)
    (tmp_path / "notes.png").write_text("not an image")
    return paths, [str(tmp_path / "broken.jpg"), str(tmp_path / "notes.png")]


def test_default_workers_count_the_cores_this_process_may_use(monkeypatch):
    """A container narrowed to 3 cores of a 64-core machine gets 2 decoding workers, not 8."""
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    assert PipelineConfig().num_workers() == 2 and PipelineConfig(workers=5).num_workers() == 5


@pytest.mark.parametrize("workers", [0, 2])
def test_pipeline_tokens_match_the_encoder_and_bad_files_are_listed(tiny_encoder, gallery, workers):
    good, bad = gallery
    seen, failed, progress = {}, [], []
    config = PipelineConfig(batch_size=2, workers=workers, out_dtype=torch.float32)
    for batch in embed_files(tiny_encoder, good + bad, config, progress=lambda d, t: progress.append((d, t))):
        assert len({item.grid_hw for item in batch.items}) <= 1  # one grid per batch
        seen.update({item.path: item for item in batch.items})
        failed += batch.failed
    assert sorted(seen) == sorted(good)
    assert sorted(f.split(":")[0] for f in failed) == sorted(bad)
    assert progress[-1] == (len(good) + len(bad), len(good) + len(bad))
    for path in good:
        [expected] = tiny_encoder.extract([path])
        item = seen[path]
        assert item.grid_hw == expected.grid_hw
        torch.testing.assert_close(item.tokens, expected.patch_tokens.reshape(-1, 192), atol=1e-4, rtol=1e-4)


def test_a_chosen_layer_and_float16_output(tiny_encoder, gallery):
    good, _ = gallery
    items = [i for b in embed_files(tiny_encoder, good[:1], PipelineConfig(layer=2, workers=0)) for i in b.items]
    [expected] = tiny_encoder.extract([good[0]], layers=[2])
    assert items[0].tokens.dtype == torch.float16
    torch.testing.assert_close(items[0].tokens.float(), expected.layer_tokens[2].reshape(-1, 192), atol=2e-2, rtol=1e-2)


def test_batched_jpeg_decoding_matches_pil_closely(tiny_encoder, gallery):
    good, bad = gallery
    jpegs = [p for p in good if p.endswith(".jpg")]
    by_pil = {i.path: i.tokens.float() for b in embed_files(tiny_encoder, jpegs, PipelineConfig(workers=0)) for i in b.items}
    results = list(embed_files(tiny_encoder, jpegs + bad, PipelineConfig(workers=0, decode="jpeg")))
    by_jpeg = {i.path: i.tokens.float() for b in results for i in b.items}
    assert sorted(by_jpeg) == sorted(jpegs)
    assert sum(len(b.failed) for b in results) == 2
    for path in jpegs:  # different resize kernels: close, not equal
        cosine = torch.nn.functional.cosine_similarity(by_pil[path], by_jpeg[path], dim=-1)
        assert cosine.mean() > 0.98


def test_a_jpeg_with_exif_rotation_takes_the_pil_path(tiny_encoder, tmp_path):
    """nvJPEG ignores EXIF orientation (torchvision applies it on the CPU only): a rotated JPEG is decoded by PIL, which
    turns it upright; an unrotated one goes on to the batched decode as bytes."""
    from ssl_core.features.pipeline import decode_file

    image = Image.fromarray(smooth_image(96, 160, seed=3))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    rotated, plain = tmp_path / "rotated.jpg", tmp_path / "plain.jpg"
    image.save(rotated, quality=95, exif=exif)
    image.save(plain, quality=95)
    kind, _, pixels = decode_file(str(rotated), tiny_encoder.policy, "jpeg")
    assert kind == "pixels"
    assert pixels.shape[1] > pixels.shape[2]  # upright: taller than wide, as the PIL path shows it
    assert decode_file(str(plain), tiny_encoder.policy, "jpeg")[0] == "jpeg"


def test_batched_jpeg_decode_takes_only_what_it_can_decode_right(tiny_encoder, tmp_path):
    """A CMYK JPEG and one over the pixel limit never reach the batched decoder: the PIL path converts the first to
    RGB and refuses the second from its header, as it does for every other file."""
    from ssl_core.features.pipeline import decode_file

    cmyk, big = tmp_path / "cmyk.jpg", tmp_path / "big.jpg"
    Image.fromarray(smooth_image(64, 64, seed=4)).convert("CMYK").save(cmyk, quality=95)
    Image.fromarray(smooth_image(64, 64, seed=5)).save(big, quality=95)
    kind, _, pixels = decode_file(str(cmyk), tiny_encoder.policy, "jpeg")
    assert kind == "pixels" and pixels.shape[0] == 3
    assert decode_file(str(big), tiny_encoder.policy, "jpeg", max_pixels=64 * 64)[0] == "jpeg"  # at the limit: kept
    kind, _, reason = decode_file(str(big), tiny_encoder.policy, "jpeg", max_pixels=64 * 64 - 1)
    assert kind == "error" and "big.jpg" in reason and "pixels" in reason


def test_a_truncated_jpeg_is_named_truncated_on_both_routes(tiny_encoder, gallery, tmp_path):
    """A JPEG cut short keeps a readable header; a batched decoder could fill in the missing part without a word, so
    it takes the PIL path, which says the file is truncated, and the rest of the gallery is embedded."""
    from ssl_core.features.pipeline import batch_decodable

    good, _ = gallery
    jpeg = next(p for p in good if p.endswith(".jpg"))
    data = open(jpeg, "rb").read()
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(data[: len(data) * 2 // 3])
    assert batch_decodable(data) and not batch_decodable(truncated.read_bytes())
    for decode in ("pil", "jpeg"):
        results = list(embed_files(tiny_encoder, [jpeg, str(truncated)], PipelineConfig(workers=0, decode=decode)))
        assert [i.path for b in results for i in b.items] == [jpeg]
        [reason] = [f for b in results for f in b.failed]
        assert reason.startswith(str(truncated)) and "truncated" in reason, decode


def test_a_jpeg_the_batched_decoder_refuses_takes_the_pil_path(tiny_encoder, gallery, monkeypatch):
    """nvJPEG reads fewer JPEG variants than PIL: a file it refuses is decoded by PIL from its bytes and embedded
    exactly as the PIL route embeds it; the others keep the batched decode."""
    import torchvision.io

    good, _ = gallery
    jpegs = [p for p in good if p.endswith(".jpg")]
    refused = len(open(jpegs[0], "rb").read())
    real_decode = torchvision.io.decode_jpeg

    def picky_decode(data, **kwargs):
        if isinstance(data, list):
            return [picky_decode(d, **kwargs) for d in data]
        if len(data) == refused:
            raise RuntimeError("nvjpeg: unsupported JPEG variant")
        return real_decode(data, **kwargs)

    monkeypatch.setattr(torchvision.io, "decode_jpeg", picky_decode)
    config = PipelineConfig(workers=0, out_dtype=torch.float32)
    by_pil = {i.path: i.tokens for b in embed_files(tiny_encoder, jpegs, config) for i in b.items}
    results = list(embed_files(tiny_encoder, jpegs, PipelineConfig(workers=0, out_dtype=torch.float32, decode="jpeg")))
    by_jpeg = {i.path: i.tokens for b in results for i in b.items}
    assert sorted(by_jpeg) == sorted(jpegs) and not any(b.failed for b in results)
    torch.testing.assert_close(by_jpeg[jpegs[0]], by_pil[jpegs[0]])  # the PIL path's own pixels
    assert not torch.equal(by_jpeg[jpegs[1]], by_pil[jpegs[1]])  # the other kept the batched decode's resize


def test_a_bucket_with_images_on_the_device_and_on_the_cpu_gathers_on_the_device():
    """With the batched decode on a GPU a bucket holds nvJPEG's images (on the device) and the PIL path's (on the
    CPU); they are stacked on the device in their order (the meta device stands in for a GPU here)."""
    from types import SimpleNamespace

    from ssl_core.features.pipeline import _BatchRunner

    runner = _BatchRunner(SimpleNamespace(device=torch.device("meta")), PipelineConfig(), total=3, progress=None)
    on_cpu = torch.zeros(3, 16, 24, dtype=torch.uint8)
    on_device = torch.zeros(3, 16, 24, dtype=torch.uint8, device="meta")
    for images in ([on_cpu, on_device, on_cpu], [on_cpu, on_cpu], [on_device]):
        pixels = runner.to_device(images)
        assert pixels.device.type == "meta" and pixels.shape == (len(images), 3, 16, 24)
