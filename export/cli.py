"""``dmad export`` subcommand registration (filled in by the export stage)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the export subcommands to the ``dmad`` parser."""
