"""Index folders lose nothing and read nothing they should not: crashes at every step, concurrent writers, damage.

Synthetic indexes (a few 16-d vectors per fake image, no encoder) keep the crash rounds fast; the writes they
exercise are the real `PatchIndex.save` / `PatchIndex.load`. Killed writes run in processes forked from a
forkserver that has the index modules imported, and die by ``os._exit(137)`` at a named step
(``PATCHLENS_CRASH_AT``).
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import smooth_image
from PIL import Image

from ssl_core.errors import IndexFormatError
from ssl_core.search.index_files import save_index
from ssl_core.search.patch_index import PatchIndex
from ssl_core.search.records import IndexedImage, IndexManifest
from ssl_core.search.storage import CRASH_ENV, CRASH_STEPS, POINTER_FILE, IndexLocked, Pointer, WriterLock, file_record

DIM = 16
ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------- synthetic indexes
def image_vectors(path: str) -> np.ndarray:
    """The vectors of a fake 2x2-patch image, fixed by its path: [4, DIM] unit float16."""
    seed = int.from_bytes(hashlib.blake2b(path.encode(), digest_size=4).digest(), "little")
    x = np.random.default_rng(seed).standard_normal((4, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)


def add_fake_images(index: PatchIndex, tag: str, count: int = 2) -> None:
    paths = [f"/synthetic/{tag}-{i}.png" for i in range(count)]
    index.append_embedded([IndexedImage(p, hashlib.blake2b(p.encode(), digest_size=12).hexdigest(), (2, 2), 0)
                           for p in paths], [image_vectors(p) for p in paths])


def synthetic_index(tag: str = "base") -> PatchIndex:
    manifest = IndexManifest(model="synthetic", model_key="synthetic@0", fingerprint="0", weights="none",
                             image_size=16, patch_size=8, layer=None, dim=DIM, kind_requested="exact")
    index = PatchIndex(manifest, None, device="cpu")
    add_fake_images(index, tag)
    return index


def content(index: PatchIndex) -> frozenset[str]:
    """The image paths of an index, after checking that every image's stored vectors are its own."""
    for image in index.images:
        stored = index.vector_index.vector_range(image.first, image.count)
        np.testing.assert_array_equal(stored, image_vectors(image.path))
    assert len(index) == 4 * len(index.images)
    return frozenset(im.path for im in index.images)


def add_paths(paths: frozenset[str], tag: str) -> frozenset[str]:
    return paths | {f"/synthetic/{tag}-{i}.png" for i in range(2)}


# ------------------------------------------------------------------------------------------------- crash injection
def _killed_write(directory: str, tag: str, crash_at: str, loaded_file: str) -> None:
    """In a forked process: load, add two fake images, save; dies at ``crash_at``. Records what it loaded."""
    os.environ[CRASH_ENV] = crash_at
    index = PatchIndex.load(directory, device="cpu")
    Path(loaded_file).write_text(json.dumps(sorted(im.path for im in index.images)))
    add_fake_images(index, tag)
    index.save(directory)


def _crash_spec(rng: random.Random) -> str:
    step = rng.choice(CRASH_STEPS)
    return f"{step}:{rng.randint(1, 3)}" if step == "cleanup" else step


def test_writes_killed_at_every_step_twice_in_a_row_leave_old_or_new_content(tmp_path):
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["ssl_core.search.index_files", "faiss"])
    directory = tmp_path / "idx"
    synthetic_index().save(directory)
    rng = random.Random(0)
    steps_hit = set()
    for round_ in range(50):
        candidates = {content(PatchIndex.load(directory, device="cpu"))}
        for write in range(2):  # two killed writes in a row, nothing opens the folder in between
            crash_at = _crash_spec(rng)
            loaded_file = tmp_path / "loaded.json"
            loaded_file.unlink(missing_ok=True)
            child = context.Process(target=_killed_write, args=(str(directory), f"r{round_}w{write}", crash_at,
                                                                  str(loaded_file)))
            child.start()
            child.join(30)
            assert child.exitcode in (0, 137), (crash_at, child.exitcode)
            steps_hit.add(crash_at.split(":")[0] if child.exitcode == 137 else "none")
            if loaded_file.exists():  # it got as far as loading: it saw one of the candidates
                loaded = frozenset(json.loads(loaded_file.read_text()))
                assert loaded in candidates, (round_, write, crash_at)
                candidates = {loaded, add_paths(loaded, f"r{round_}w{write}")}
        final = PatchIndex.load(directory, device="cpu")
        assert content(final) in candidates, (round_, crash_at)
        generation = json.loads((directory / POINTER_FILE).read_text())["generation"]
        assert sorted(p.name for p in directory.iterdir()) == [".lock", POINTER_FILE, generation]  # no leftovers
    assert set(CRASH_STEPS) <= steps_hit  # every step was hit at least once


# ------------------------------------------------------------------------------------------------- concurrent writers
def test_two_concurrent_cli_adds_keep_both_sides_images(tiny_encoder, tmp_path):
    sides = []
    for side in "ab":
        folder = tmp_path / side
        folder.mkdir()
        for i in range(4):
            Image.fromarray(smooth_image(48, 48 + 8 * i, seed=ord(side) * 10 + i)).save(folder / f"{side}{i}.png")
        sides.append(folder)
    Image.fromarray(smooth_image(48, 48, seed=1)).save(tmp_path / "first.png")
    index, _ = PatchIndex.build([tmp_path / "first.png"], tiny_encoder)
    index.save(tmp_path / "idx")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "app.cli.gallery", "index", "add", str(tmp_path / "idx")]
    runs = [subprocess.Popen(command + [str(folder)], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
            for folder in sides]
    results = [(run.wait(300), run.stderr.read()) for run in runs]
    final = PatchIndex.load(tmp_path / "idx")
    names = sorted(Path(im.path).name for im in final.images)
    for (code, err), folder in zip(results, sides):
        assert "Traceback" not in err, err
        mine = sorted(p.name for p in folder.iterdir())
        if code == 0:
            assert "4 images added" in err and set(mine) <= set(names), err
        else:  # refused: then it added nothing
            assert not set(mine) & set(names), err
    assert sum(code == 0 for code, _ in results) >= 1
    assert len(names) == 1 + 4 * sum(code == 0 for code, _ in results)


def test_a_live_lock_is_waited_for_then_named_and_a_dead_one_is_broken(tmp_path):
    directory = tmp_path / "idx"
    synthetic_index().save(directory)
    index = PatchIndex.load(directory, device="cpu")
    add_fake_images(index, "more")
    with WriterLock(directory):
        with pytest.raises(IndexLocked, match=f"pid {os.getpid()} on .* did not finish within 0 s; nothing was "):
            save_index(index, directory, lock_timeout=0.2)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (directory / ".lock").write_text(json.dumps({"pid": dead.pid, "host": "here", "since": "then"}))
    lock = WriterLock(directory, timeout=1)
    with lock:
        assert lock.stale_holder == f"pid {dead.pid} on here since then"
    index.save(directory)
    assert len(PatchIndex.load(directory).images) == 4 and (directory / ".lock").read_text() == ""


def test_a_save_merges_images_committed_since_the_index_was_loaded(tmp_path):
    directory = tmp_path / "idx"
    synthetic_index().save(directory)
    first, second = PatchIndex.load(directory, device="cpu"), PatchIndex.load(directory, device="cpu")
    add_fake_images(first, "first")
    add_fake_images(second, "second")
    first.save(directory)
    second.save(directory)  # loaded before `first` was committed: merged, not overwritten
    expected = add_paths(add_paths(frozenset(content(synthetic_index())), "first"), "second")
    assert content(second) == content(PatchIndex.load(directory, device="cpu")) == expected


# ------------------------------------------------------------------------------------------------- damage
DAMAGE = ("flip-start", "flip-middle", "flip-end", "truncate", "extend", "delete", "empty")


def damage(path: Path, kind: str) -> None:
    data = bytearray(path.read_bytes())
    if kind.startswith("flip"):
        at = {"flip-start": 0, "flip-middle": len(data) // 2, "flip-end": len(data) - 2}[kind]
        data[at] ^= 0x5A
        path.write_bytes(bytes(data))
    elif kind == "truncate":
        path.write_bytes(bytes(data[: len(data) * 2 // 3]))
    elif kind == "extend":
        path.write_bytes(bytes(data) + b"\0" * 16)
    elif kind == "empty":
        path.write_bytes(b"")
    else:
        path.unlink()


@pytest.fixture(scope="module")
def saved_synthetic(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("saved") / "idx"
    index = synthetic_index()
    add_fake_images(index, "more", 3)
    index.save(directory)
    return directory


def test_every_damage_to_every_file_is_named_on_load_and_by_verify(saved_synthetic, tmp_path, capsys):
    from app.cli.main import main

    generation = json.loads((saved_synthetic / POINTER_FILE).read_text())["generation"]
    files = [POINTER_FILE] + [f"{generation}/{name}" for name in ("manifest.json", "index.faiss", "patches.npz")]
    for name in files:
        for kind in DAMAGE:
            copy = tmp_path / f"{name.replace('/', '_')}-{kind}"
            shutil.copytree(saved_synthetic, copy)
            damage(copy / name, kind)
            with pytest.raises(IndexFormatError) as err:
                PatchIndex.load(copy, device="cpu")
            message = str(err.value)
            assert Path(name).name in message and ("damaged" in message or "missing" in message), (name, kind, message)
            assert main(["index", "verify", str(copy)]) == 1
            assert f"DAMAGED: {message}" in capsys.readouterr().err
            shutil.rmtree(copy)


def test_edited_manifest_is_refused_and_a_forged_one_fails_deep_verify(tiny_encoder, tmp_path, capsys):
    from app.cli.main import main

    paths = []
    for i in range(2):
        paths.append(tmp_path / f"g{i}.png")
        Image.fromarray(smooth_image(48, 64, seed=40 + i)).save(paths[-1])
    index, _ = PatchIndex.build(paths, tiny_encoder)
    directory = index.save(tmp_path / "idx")
    assert main(["index", "verify", str(directory), "--deep"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"re-embedded 2 images, lowest cosine (0\.99\d\d|1\.0000)", out) and out.strip().endswith("OK")
    generation = directory / json.loads((directory / POINTER_FILE).read_text())["generation"]
    original = (generation / "manifest.json").read_text()
    for field, value in [("model", "patchlens-dino"), ("model_key", "vit@0000"), ("fingerprint", "0000"), ("layer", 3)]:
        edited = json.loads(original)
        edited[field] = value
        (generation / "manifest.json").write_text(json.dumps(edited, indent=1))
        with pytest.raises(IndexFormatError, match="manifest.json: the manifest .* is damaged"):
            PatchIndex.load(directory)
    forged = json.loads(original)
    forged["layer"] = 3  # an edit made by someone who also rewrote the commit record: consistent, but a lie
    (generation / "manifest.json").write_text(json.dumps(forged, indent=1))
    forged_pointer = Pointer(generation.name, file_record(generation / "manifest.json"))
    (directory / POINTER_FILE).write_bytes(forged_pointer.to_bytes())
    assert PatchIndex.load(directory).layer == 3
    assert main(["index", "verify", str(directory), "--deep"]) == 1
    out = capsys.readouterr().out
    assert "stored vectors do not match a re-embedding" in out and out.strip().endswith("FAILED")
