"""The same attacks as test_access.py, against the live app over its HTTP API (gradio_client and Gradio's REST
route): one message per field whatever the path, and a second session that can neither name nor read the first
session's uploads."""
from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest
from browser import LiveApp
from test_access import attacks

pytestmark = pytest.mark.slow


def refused(call) -> str:
    with pytest.raises(Exception) as caught:
        call()
    return str(caught.value)


def rest_call(url: str, api_name: str, data: list) -> str:
    """Gradio's REST route, as any HTTP client can use it: POST the inputs, then read the event stream."""
    request = urllib.request.Request(f"{url}gradio_api/call/{api_name}", json.dumps({"data": data}).encode(),
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        event_id = json.load(response)["event_id"]
    with urllib.request.urlopen(f"{url}gradio_api/call/{api_name}/{event_id}", timeout=120) as response:
        return response.read().decode()


def upload(url: str, path: Path) -> str:
    """Gradio's upload route: the path on the server that the upload got."""
    boundary = "patchlens-test-boundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{path.name}\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(f"{url}gradio_api/upload", body,
                                     {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(request, timeout=60) as response:
        [server_path] = json.load(response)
    return server_path


def test_path_attacks_through_the_http_api_get_one_message_per_field(tmp_path):
    from gradio_client import Client

    allowed = tmp_path / "allowed"
    allowed.mkdir()
    paths = attacks(tmp_path, allowed)
    with LiveApp("--model", "random-tiny", "--allow-dir", str(allowed)) as app:
        client = Client(app.url, verbose=False)
        client.predict(api_name="/add_examples")
        fields = {
            "mae": lambda text: client.predict(selected="chelsea.jpg", mae_name=text, mae_weights=None, kind="random",
                                               ratio=0.75, seed=0, api_name="/reconstruct"),
            "gallery": lambda text: client.predict("server folder", text, "exact", "final (normed)", "random-tiny",
                                                   None, "", 0, api_name="/build_index"),
            "index": lambda text: client.predict(path=text, api_name="/load_index"),
        }
        messages = {field: {kind: refused(lambda: call(text)) for kind, text in paths.items()}
                    for field, call in fields.items()}
        # a refused weights path is a failed model switch: a warning, and the controls go back (weights path "")
        switched = {kind: client.predict(model="random-tiny", weights_upload=None, weights_path=text, image_size=0,
                                         api_name="/model_status") for kind, text in paths.items()}
        model = client.predict(model="https://127.0.0.1/evil.pth", weights_upload=None, weights_path="",
                               image_size=0, api_name="/model_status")
        # a file reference to a picture input (a click handler's): Gradio's own check, kept on by how serve starts
        image = Path(__file__).parents[1] / "assets" / "examples" / "chelsea.jpg"
        reference = rest_call(app.url, "click_patch", [None, {"path": str(image), "meta": {"_type": "gradio.FileData"}},
                                                       "random-tiny", None, "", 0])
        log = app.output()
    for field, by_kind in messages.items():
        assert len(set(by_kind.values())) == 1, (field, by_kind)
        [message] = set(by_kind.values())
        assert "Refused" in message and "outside the allowed folders" in message, message
        for telling in ("not found", "No such", "cannot", "reach", "Permission", "not a checkpoint", "shadow"):
            assert telling not in message, (field, message)
    assert all(result[2] == "" for result in switched.values()), switched  # no attacked path kept or loaded
    assert model[0] == "random-tiny"  # a URL as the model name: refused, the control goes back to the model loaded
    assert "event: error" in reference and "not uploaded by a user" in reference
    assert "unexpected error" not in log and "127.0.0.1:443" not in log


def test_a_second_session_can_neither_name_nor_read_the_first_sessions_uploads(tmp_path, image_file):
    from gradio_client import Client

    server_tmp = tmp_path / "server"  # the server's temp folder, all of it under its allowed folder: the worst case
    uploads = server_tmp / "uploads"
    uploads.mkdir(parents=True)
    secret = Path(image_file("secret.png", 64, 64, seed=3))
    env = {"TMPDIR": str(server_tmp), "GRADIO_TEMP_DIR": str(uploads)}
    with LiveApp("--model", "random-tiny", "--allow-dir", str(server_tmp), env=env) as app:
        sent = upload(app.url, secret)  # what A's browser gets back from the upload route
        first = rest_call(app.url, "add_images", [[{"path": sent, "meta": {"_type": "gradio.FileData"}}]])
        assert "1 image(s) loaded" in first  # A's session (one REST call) loaded it
        [kept] = list(server_tmp.glob("patchlens-sessions-*/*/*/secret.png"))  # moved into A's session folder
        assert not Path(sent).exists()

        second = rest_call(app.url, "add_images", [[{"path": sent, "meta": {"_type": "gradio.FileData"}}]])
        assert "0 image(s) loaded" in second and "must be a file uploaded in this browser session" in second
        b = Client(app.url, verbose=False)
        whole = b.predict("server folder", str(server_tmp), "exact", "final (normed)", "random-tiny", None, "", 0,
                          api_name="/build_index")
        messages = {refused(lambda: b.predict("server folder", str(folder), "exact", "final (normed)", "random-tiny",
                                              None, "", 0, api_name="/build_index"))
                    for folder in (uploads, Path(sent).parent, kept.parent, kept.parent.parent, kept)}
        weights = b.predict(model="random-tiny", weights_upload=None, weights_path=str(kept), image_size=0,
                            api_name="/model_status")  # a failed switch: a warning, the controls go back
    assert "0 images added" in whole and "files in the app's own folders, not read" in whole  # counted, not named
    assert "secret" not in whole and "patchlens-sessions" not in whole
    assert len(messages) == 1 and "Refused" in messages.pop()
    assert weights[2] == "" and "secret" not in str(weights)  # A's upload was not loaded as B's weights
