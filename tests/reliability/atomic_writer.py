"""Helper process for the atomic-write kill test (not a test module).

Imports torch once, then serves commands on stdin, one per line, answering on stdout:

* ``fork PATH BASE``: fork a writer child that saves ``{"i": i, "t": full(N, i)}`` (~20 MB of
  int32) to PATH through :func:`compress.io.atomic_save` in an endless loop, i = BASE, BASE+1,
  ...; answers the child's pid. The test SIGKILLs that child at a random moment.
* ``wait PID``: reap the child; answers the signal that ended it (0 if it exited).

Forking keeps the 20 kills cheap: each writer starts instantly instead of importing torch.
"""

from __future__ import annotations

import os
import sys

import torch

from dmad.compress.io import atomic_save

N = 5_000_000  # int32 elements: 20 MB


def _writer(path: str, base: int) -> None:
    i = base
    while True:
        atomic_save({"i": i, "t": torch.full((N,), i, dtype=torch.int32)}, path)
        i += 1


def main() -> None:
    for line in sys.stdin:
        cmd, *args = line.split()
        if cmd == "fork":
            pid = os.fork()
            if pid == 0:
                try:
                    _writer(args[0], int(args[1]))
                finally:
                    os._exit(1)
            print(pid, flush=True)
        elif cmd == "wait":
            _, status = os.waitpid(int(args[0]), 0)
            print(os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0, flush=True)


if __name__ == "__main__":
    main()
