"""``dmad bench`` / ``dmad compare`` subcommand registration (filled in by the benchmark stage)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the benchmark subcommands to the ``dmad`` parser."""
