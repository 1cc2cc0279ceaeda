"""The one exception type a user can cause.

Every mistake a user can make (a missing file, a bad config field, an unreadable image, an
impossible budget) is raised as :class:`DmadError`; the CLI prints it as one line and exits 2.
Anything else escaping is a bug in dmad and may show a traceback.
"""

from __future__ import annotations


class DmadError(Exception):
    """A user-facing error: its message is one line that names the file or field at fault."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))
