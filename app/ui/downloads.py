"""Pictures as downloads with names that say what they are: each picture a view shows is written to a PNG file
named after the model, the view, the image and the picture (`ViewResult.picture_file_name`), and the component is
given that file, so its download button saves it under that name."""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
from gradio.components import Component

from app.views.result import ViewResult
from ssl_core.render import draw

Files = dict[str, tuple[bytes, tuple[str, int]]]  # file name -> (PNG bytes, (picture name, gallery item or -1))


def picture_files(result: ViewResult, targets: Mapping[str, Component]) -> Files:
    """The PNG bytes of every picture and gallery item of ``result`` shown in ``targets``, by download name (see
    `ViewResult.picture_file_name`; names made unique), each with its (picture name, item index or -1)."""
    files: Files = {}

    def add(file: str, picture: np.ndarray, key: tuple[str, int]) -> None:
        stem, n = file.removesuffix(".png"), 1
        while file in files:
            n += 1
            file = f"{stem}-{n}.png"
        files[file] = (draw.to_png_bytes(picture), key)

    for name in targets:
        if name in result.pictures and result.pictures[name] is not None:
            add(result.picture_file_name(name), result.pictures[name], (name, -1))
        for i, (picture, _) in enumerate(result.galleries.get(name) or []):
            add(result.picture_file_name(name, i), picture, (name, i))
    return files


def picture_paths(result: ViewResult, name: str, files: Files,
                  paths: Mapping[str, str]) -> Any:
    """The value of a picture's or gallery's component: the written file(s), so downloads keep their names."""
    by_key = {key: paths[file] for file, (_, key) in files.items()}
    if name in result.pictures:
        return by_key.get((name, -1))
    return [(by_key[(name, i)], caption) for i, (_, caption) in enumerate(result.galleries[name])]
