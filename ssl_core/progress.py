"""The one progress callback type: ``progress(done, total)``, called as work advances (CLI: tqdm; app: gr.Progress)."""
from __future__ import annotations

from typing import Callable

ProgressFn = Callable[[int, int], None]

__all__ = ["ProgressFn"]
