"""`patchlens index` and `embed` with nothing to do: non-zero exit, nothing written; links not followed are named."""
from __future__ import annotations

import json
import os

import pytest
from conftest import smooth_image
from PIL import Image

from app.cli.main import main
from ssl_core.search.patch_index import PatchIndex


@pytest.fixture
def folders(tmp_path):
    """An empty folder, a folder of unreadable images, and a folder with one good image."""
    empty, broken, good = tmp_path / "empty", tmp_path / "broken", tmp_path / "good"
    for folder in (empty, broken, good):
        folder.mkdir()
    (broken / "a.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (broken / "b.png").write_bytes(b"")
    Image.fromarray(smooth_image(48, 64, seed=3)).save(good / "g.png")
    return empty, broken, good


def test_build_with_nothing_readable_exits_non_zero_and_writes_nothing(folders, tmp_path, capsys):
    empty, broken, _ = folders
    out = tmp_path / "idx"
    assert main(["index", "build", str(empty), "--model", "random-tiny", "--out", str(out)]) == 1
    assert f"nothing indexed (no image files in {empty}); nothing was written" in capsys.readouterr().err
    assert main(["index", "build", str(broken), "--model", "random-tiny", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "nothing indexed (2 new image files could not be read)" in err and "a.jpg" in err and "b.png" in err
    assert not out.exists()


def test_add_with_nothing_readable_exits_non_zero_and_leaves_the_index_as_it_was(folders, tmp_path, capsys):
    empty, broken, good = folders
    out = tmp_path / "idx"
    assert main(["index", "build", str(good), "--model", "random-tiny", "--out", str(out)]) == 0
    before = sorted(p.name for p in out.iterdir()), (out / "CURRENT").read_bytes()
    for folder in (empty, broken):
        assert main(["index", "add", str(out), str(folder)]) == 1
        assert "nothing added" in capsys.readouterr().err
        assert (sorted(p.name for p in out.iterdir()), (out / "CURRENT").read_bytes()) == before
    assert main(["index", "add", str(out), str(good)]) == 0  # already indexed: nothing to do is no failure
    assert "1 already indexed" in capsys.readouterr().err


def test_embed_with_nothing_readable_exits_non_zero_and_writes_nothing(folders, tmp_path, capsys):
    empty, broken, _ = folders
    for folder in (empty, broken):
        out = tmp_path / f"{folder.name}.npz"
        assert main(["embed", str(folder), "--model", "random-tiny", "--out", str(out)]) == 1
        assert "nothing was written" in capsys.readouterr().err and not out.exists()


def test_symlink_loops_and_linked_folders_are_named_not_skipped_silently(folders, tmp_path, capsys):
    _, _, good = folders
    os.symlink(good, good / "loop")  # a link to the folder it is in
    os.symlink(good / "self.png", good / "self.png")  # resolves to itself
    other = tmp_path / "other"
    other.mkdir()
    Image.fromarray(smooth_image(48, 48, seed=4)).save(other / "o.png")
    os.symlink(other, good / "linked")
    out = tmp_path / "idx"
    assert main(["index", "build", str(good), "--model", "random-tiny", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"skipped {good / 'loop'}: symlink to an enclosing folder (a loop), not followed" in err
    assert f"skipped {good / 'self.png'}: symlink loop, skipped" in err
    assert f"skipped {good / 'linked'}: symlinked folder, not followed" in err
    assert "1 images added" in err and "3 symlinks not followed" in err
    assert [im.path for im in PatchIndex.load(out).images] == [str(good / "g.png")]


def test_verify_reports_an_intact_index_and_deep_checks_what_is_at_hand(folders, tmp_path, capsys):
    _, _, good = folders
    out = tmp_path / "idx"
    Image.fromarray(smooth_image(48, 56, seed=5)).save(good / "h.png")
    assert main(["index", "build", str(good), "--model", "random-tiny", "--out", str(out)]) == 0
    assert main(["index", "verify", str(out)]) == 0
    text = capsys.readouterr().out
    assert "generation gen-000001, 3 files" in text and "2 images" in text and text.strip().endswith("OK")
    (good / "h.png").unlink()
    assert main(["index", "verify", str(out), "--deep"]) == 0
    text = capsys.readouterr().out
    assert "re-embedded 1 images" in text and "1 not at hand" in text
    (good / "g.png").unlink()  # nothing left to compare: a deep check that checked nothing is no pass
    assert main(["index", "verify", str(out), "--deep"]) == 1
    assert "could not be checked" in capsys.readouterr().out
    manifest = out / json.loads((out / "CURRENT").read_text())["generation"] / "manifest.json"
    assert json.loads(manifest.read_text())["files"]["patches.npz"]["size"] > 0


def test_the_device_flag_reaches_the_index_search_and_a_bad_one_is_named(folders, tmp_path, capsys, monkeypatch):
    """On a machine with a GPU, ``--device cpu`` searches on the CPU too, not only embeds there (the index would
    otherwise copy every vector to the default GPU); a device that does not exist is refused with its name."""
    import torch

    import ssl_core.search.patch_index as patch_index

    _, _, good = folders
    out = tmp_path / "idx"
    assert main(["index", "build", str(good), "--model", "random-tiny", "--out", str(out)]) == 0
    monkeypatch.setattr(patch_index, "default_device", lambda: torch.device("cuda"))  # as with a GPU (none here)
    query = str(good / "g.png")
    assert main(["index", "search", str(out), query, "--patch", "1,1", "--k", "2", "--device", "cpu"]) == 0
    assert "g.png" in capsys.readouterr().out
    for bad, reason in (("gpu0", "is not a device"), (f"cuda:{torch.cuda.device_count()}", "CUDA GPU(s)")):
        assert main(["index", "search", str(out), query, "--device", bad]) == 2
        assert reason in capsys.readouterr().err


def test_a_numbered_gpu_becomes_the_current_one(monkeypatch):
    """--device cuda:1 makes GPU 1 current, so that what torch puts on "the" GPU (pinned memory for copies, a
    loader's pinning thread, an index's default device) goes there, not to GPU 0; cpu and plain cuda change nothing."""
    import torch

    from app.cli.main import select_device

    current = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    for name in ("cpu", "cuda", "cuda:1"):
        select_device(name)
    assert current == [torch.device("cuda:1")]


def test_build_keeps_an_index_already_there_unless_told_to_replace_it(folders, tmp_path, capsys):
    _, _, good = folders
    out = tmp_path / "idx"
    assert main(["index", "build", str(good), "--model", "random-tiny", "--out", str(out)]) == 0
    pointer = (out / "CURRENT").read_bytes()
    assert main(["index", "build", str(good), "--model", "patchlens-sup", "--out", str(out)]) == 2
    assert f"{out} already holds an index; add images to it with `patchlens index add" in capsys.readouterr().err
    assert (out / "CURRENT").read_bytes() == pointer and PatchIndex.load(out).manifest.model == "random-tiny"
    assert main(["index", "build", str(good), "--model", "patchlens-sup", "--out", str(out), "--overwrite"]) == 0
    assert PatchIndex.load(out).manifest.model == "patchlens-sup"


def test_search_refuses_a_k_below_one_and_deep_verify_refuses_another_model(folders, tmp_path, capsys):
    _, _, good = folders
    out = tmp_path / "idx"
    assert main(["index", "build", str(good), "--model", "random-tiny", "--out", str(out)]) == 0
    with pytest.raises(SystemExit) as exit_info:
        main(["index", "search", str(out), str(good / "g.png"), "--k", "0"])
    assert exit_info.value.code == 2 and "must be a positive integer" in capsys.readouterr().err
    assert main(["index", "verify", str(out), "--deep", "--model", "patchlens-sup"]) == 2
    err = capsys.readouterr().err
    assert "this index was built with" in err and "FAILED" not in err
    assert main(["index", "verify", str(out), "--deep", "--model", "random-tiny"]) == 0  # its own model, named


def test_verify_tells_a_folder_that_is_no_index_from_a_damaged_index(folders, tmp_path, capsys):
    _, _, good = folders
    assert main(["index", "verify", str(good)]) == 2
    err = capsys.readouterr().err
    assert "not an index folder" in err and "DAMAGED" not in err
    out = tmp_path / "idx"
    assert main(["index", "build", str(good), "--model", "random-tiny", "--out", str(out)]) == 0
    (out / "CURRENT").unlink()  # its generations are still there: a damaged index
    assert main(["index", "verify", str(out)]) == 1 and "DAMAGED" in capsys.readouterr().err
