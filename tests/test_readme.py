"""The README's Python example runs as written (on the bundled model and the example images, offline)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_python_example_runs(monkeypatch) -> None:
    readme = (ROOT / "README.md").read_text()
    code = re.search(r"## Python\n\n```python\n(.*?)```", readme, re.S).group(1)
    examples = ROOT / "assets" / "examples"
    for hub_name, bundled in (('"dino-vits16"', '"patchlens-sup"'),):
        code = code.replace(hub_name, bundled)
    code = code.replace('"cat.jpg"', repr(str(examples / "chelsea.jpg"))).replace('"dog.jpg"', repr(str(examples / "astronaut.jpg")))
    code = code.replace("layers=[6]", "layers=[3]").replace("layer_tokens[6]", "layer_tokens[3]")
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102  (our own README)
    assert namespace["sharp"].shape == namespace["f"].image.shape[:2]
    assert namespace["pairs"].count <= 20 and namespace["sweep"].blocks == list(range(6))
    assert namespace["reach"].nmi.shape == (6, 3) and namespace["reach"].images == 2


REPO_PATH = re.compile(r"(?:`|\]\()((?:ssl_core|app|scripts|docs|assets|tests|bench|\.ci)/[\w./*-]*)")


def test_every_repo_path_the_docs_name_exists() -> None:
    """A file moved in a refactor leaves no stale path behind in the README, docs/ or the model cards."""
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "assets").rglob("*.md"))]
    named = {(doc.relative_to(ROOT), match.group(1).rstrip(".")) for doc in docs for match in REPO_PATH.finditer(doc.read_text())}
    assert len(named) > 20  # the pattern still finds the docs' paths
    missing = sorted(f"{doc}: {path}" for doc, path in named if not any(ROOT.glob(path)))
    assert not missing, missing
