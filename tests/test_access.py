"""The app reads nothing it should not (docs/security.md, "The app"): one check for every path, URL and model name
a client sends, real paths resolved, uploads per session. In-process, through the tabs' callbacks; the same attacks
over HTTP are in test_access_api.py."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.access import MODEL_REFUSED, Access, check_model_name, session
from app.ui.app import PatchLensApp
from app.ui.state import AppConfig, LoadedImage
from app.ui.tabs.gallery import GalleryTab
from app.ui.tabs.inspect import InspectTab
from app.ui.tabs.reconstruct import ReconstructTab
from ssl_core.errors import BadRequest, PatchLensError


def quiet(*args: object, **kwargs: object) -> None:
    pass


def attacks(tmp_path: Path, allowed: Path) -> dict[str, str]:
    """Paths a client might send to reach files outside ``allowed``, by kind."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "mae.safetensors").write_bytes(b"x" * 64)
    unreadable = outside / "shadow"
    unreadable.write_text("root:*:19000:0:99999:7:::\n")
    unreadable.chmod(0)
    (allowed / "link.safetensors").symlink_to(outside / "mae.safetensors")
    (allowed / "linked-folder").symlink_to(outside, target_is_directory=True)
    return {
        "missing file": str(outside / "missing.safetensors"),
        "existing file outside": str(outside / "mae.safetensors"),
        "unreadable file": str(unreadable),
        "system file": "/etc/shadow",
        "URL": "https://127.0.0.1/evil.pth",
        "URL to an allowed path": f"file://{allowed}/mae.safetensors",
        ".. traversal": f"{allowed}/../outside/mae.safetensors",
        "relative traversal": "../" * 12 + "etc/passwd",
        "symlinked file": str(allowed / "link.safetensors"),
        "file in a symlinked folder": str(allowed / "linked-folder" / "mae.safetensors"),
        "NUL byte": f"{allowed}/a\x00b",
    }


@pytest.fixture
def app(tmp_path: Path) -> PatchLensApp:
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    uploads = tmp_path / "gradio-uploads"
    uploads.mkdir()
    return PatchLensApp(AppConfig(allow_dirs=[allowed], upload_dirs=[uploads], default_model="random-tiny"))


def refusal(call) -> str:
    with pytest.raises(PatchLensError) as caught:
        call()
    return str(caught.value)


def test_every_path_attack_on_the_mae_and_weights_fields_gets_one_message_that_tells_nothing(app, tmp_path):
    from ssl_core.mim.mae import build_mae, save_mae

    allowed = app.access.allow_dirs[0]
    image = [LoadedImage("a.png", Image.fromarray(np.full((64, 64, 3), 90, np.uint8)))]
    reconstruct, status = ReconstructTab(app).reconstruct, InspectTab(app).model_status
    paths = attacks(tmp_path, allowed)
    with session("A"):
        mae_messages = {kind: refusal(lambda: reconstruct(image, "a.png", text, None, "random", 0.75, 0, None,
                                                          False, progress=quiet)) for kind, text in paths.items()}
        weights_messages = {kind: refusal(lambda: status("random-tiny", None, text, 0, None)) for kind, text in paths.items()}
        save_mae(build_mae(), allowed / "mae.safetensors")
        result = reconstruct(image, "a.png", str(allowed / "mae.safetensors"), None, "random", 0.5, 0, None,
                             False, progress=quiet)
    for messages in (mae_messages, weights_messages):
        assert len(set(messages.values())) == 1, messages  # the same words for every kind of attack
        [message] = set(messages.values())
        assert message.startswith("Refused:") and "outside the allowed folders" in message
        for telling in ("not found", "No such", "cannot", "reach", "Permission", "not a checkpoint", "shadow"):
            assert telling not in message
    assert "the MAE" in mae_messages["URL"] and "the weights file" in weights_messages["URL"]
    assert result.pictures["reconstruction"].shape[2] == 3  # an MAE under the allowed folder loads


def test_model_names_are_registry_names_or_timm_ids_never_paths_or_urls(app, tmp_path):
    assert check_model_name("random-tiny") == "random-tiny"
    assert check_model_name("vit_small_patch16_224.augreg_in21k") == "vit_small_patch16_224.augreg_in21k"
    for name in ("/etc/shadow", str(tmp_path), "https://127.0.0.1/x.pth", "hf-hub:timm/vit_small_patch16_224",
                 "vit_small_patch16_224.no_such_tag", "vit_small_patch16_224/../../x", "../random-tiny"):
        with pytest.raises(BadRequest) as caught:
            check_model_name(name)
        assert str(caught.value) == MODEL_REFUSED
    for call in (lambda: app.pool.get("/etc/shadow"), lambda: app.pool.get_mae("https://127.0.0.1/evil.pth"),
                 lambda: app.encoder("https://127.0.0.1/evil.pth")):  # every tab's model lists reach these
        assert refusal(call) == MODEL_REFUSED


def upload(app: PatchLensApp, name: str = "photo.png", seed: int = 0) -> str:
    """A file as Gradio's upload route leaves it: <upload folder>/<hash>/<name>."""
    folder = app.access.upload_dirs[0] / f"{seed:040x}"
    folder.mkdir()
    path = folder / name
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(path)
    return str(path)


def test_uploads_belong_to_the_session_that_sent_them(app):
    path = upload(app)
    with session("A"):
        images, _, status, _, _ = app.add_images([path], [])
        again = app.access.upload(path, "an image")  # the same path, sent again by A, means A's file
    assert [i.name for i in images] == ["photo.png"] and again.is_file() and not Path(path).exists()
    with session("B"):
        b_images, _, b_status, _, _ = app.add_images([path], [])
        assert b_images == [] and "must be a file uploaded in this browser session" in b_status
        for folder in (Path(path).parent, app.access.upload_dirs[0], again.parent, again, app.access.sessions_root):
            with pytest.raises(BadRequest, match="Refused"):
                app.access.readable(folder, "the gallery folder")
    with session(None):  # no session, no uploads
        assert refusal(lambda: app.access.upload(path, "an image")).startswith("Refused")
    app.access.end_session("A")
    assert not again.exists()


def test_private_folders_stay_private_under_an_allowed_folder_and_walks_skip_them(tmp_path):
    root = tmp_path / "tmp"
    (root / "uploads" / "f00").mkdir(parents=True)
    Image.new("RGB", (32, 32), "red").save(root / "uploads" / "f00" / "theirs.png")
    Image.new("RGB", (32, 32), "blue").save(root / "mine.png")
    access = Access([root], upload_dirs=[root / "uploads"])
    with pytest.raises(BadRequest, match="Refused"):
        access.readable(root / "uploads" / "f00" / "theirs.png", "the gallery folder")
    from ssl_core.search.sources import gallery_files

    paths, skipped, refused = gallery_files([root], access.walk_problem)
    assert paths == [root / "mine.png"] and skipped == []
    assert refused == ["files in the app's own folders, not read"]  # not named: they may be another's


def test_a_link_out_of_the_indexed_folder_is_skipped_and_reported(app, tmp_path):
    allowed = app.access.allow_dirs[0]
    photos, outside = allowed / "photos", tmp_path / "private"
    photos.mkdir()
    outside.mkdir()
    Image.new("RGB", (64, 64), "green").save(photos / "mine.png")
    Image.new("RGB", (64, 64), "red").save(outside / "secret.png")
    (photos / "secret.png").symlink_to(outside / "secret.png")
    (photos / "inside.png").symlink_to(photos / "mine.png")  # a link that stays inside is fine
    with session("A"):
        result = GalleryTab(app).build_index([], "server folder", str(photos), "exact", None, "final (normed)",
                                             "random-tiny", None, "", 0, None, progress=quiet)
    index = result.state
    assert [Path(i.path).name for i in index.images] == ["mine.png"]  # the inside link is the same file
    assert f"{photos / 'secret.png'}: leads outside the allowed folders, not read" in result.markdown
    assert "1 outside the allowed folders, not read" in result.markdown


def test_index_folders_with_links_out_or_images_outside_are_refused(app, tmp_path):
    allowed = app.access.allow_dirs[0]
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    Image.new("RGB", (64, 64), "red").save(outside / "photo.png")
    from ssl_core import load_encoder
    from ssl_core.search.patch_index import PatchIndex

    index, _ = PatchIndex.build([outside / "photo.png"], load_encoder("random-tiny", cache=None), kind="exact")
    index.save(allowed / "theirs.index")  # an index (made with the CLI) of images the app may not read
    tab = GalleryTab(app)
    with session("A"):
        assert "lists 1 of its 1 images outside the allowed folders" in refusal(
            lambda: tab.load_index(str(allowed / "theirs.index")))
        linked = allowed / "linked.index"
        linked.mkdir()
        (linked / "CURRENT").symlink_to(outside / "photo.png")
        assert "holds links that lead outside the allowed folders (CURRENT)" in refusal(
            lambda: tab.load_index(str(linked)))
        assert "holds links" in refusal(lambda: tab.save_index(index, str(linked)))
        assert refusal(lambda: tab.save_index(index, str(outside / "x.index"))).startswith("Refused")


@pytest.mark.skipif(os.name != "posix", reason="symlinks")
def test_the_access_check_resolves_links_in_every_component(tmp_path):
    allowed, outside = tmp_path / "a", tmp_path / "b"
    (allowed / "sub").mkdir(parents=True)
    outside.mkdir()
    (outside / "w.pth").write_bytes(b"x")
    (allowed / "sub" / "up").symlink_to(tmp_path, target_is_directory=True)
    access = Access([allowed])
    assert access.problem(allowed / "sub" / "up" / "b" / "w.pth")  # a link in the middle of the path
    assert access.problem(allowed / "sub" / "up" / "a" / "sub") == ""  # ...back inside: fine
