"""A custom class for the pickled-code checkpoints: unpickling it runs code (writes a marker).

``dmad`` loads every checkpoint with ``weights_only=True``, so the marker must never appear.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


class Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __getstate__(self) -> dict[str, Any]:
        return {"marker": self.marker}

    def __setstate__(self, state: dict[str, Any]) -> None:  # runs on unpickling
        Path(state["marker"]).write_text("code from a checkpoint ran\n")
        self.marker = state["marker"]
