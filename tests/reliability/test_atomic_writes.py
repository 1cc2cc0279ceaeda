"""Atomic writes: a SIGKILL at any moment leaves the previous complete file or none.

A writer repeatedly saves a ~20 MB checkpoint to one path through ``compress.io.atomic_save``
(``atomic_writer.py``) and is killed 20 times at random moments. After every kill the path is
absent or loads completely with ``weights_only=True`` and is internally consistent (every value
equals the iteration number stored with it); a kill leaves at most one new ``.NAME.*.tmp``
partial file, which nothing that looks for the real file picks up.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from tests.reliability.atomic_writer import N
from tests.reliability.conftest import ROOT, cli_environ

KILLS = 20


def test_sigkill_never_leaves_a_partial_file(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    tmp_re = re.compile(r"^\.checkpoint\.pt\..+\.tmp$")
    rng = random.Random(1234)
    server = subprocess.Popen([sys.executable, str(Path(__file__).with_name("atomic_writer.py"))],
                              env=cli_environ(), cwd=ROOT, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert server.stdin is not None and server.stdout is not None
    temps_before, complete, mid_write, last = 0, 0, 0, -1
    try:
        for k in range(KILLS):
            base = k * 1000  # values written by kill k's writer: base, base + 1, ...
            server.stdin.write(f"fork {path} {base}\n")
            server.stdin.flush()
            pid = int(server.stdout.readline())
            time.sleep(rng.uniform(0.02, 0.5))
            os.kill(pid, signal.SIGKILL)
            server.stdin.write(f"wait {pid}\n")
            server.stdin.flush()
            assert int(server.stdout.readline()) == signal.SIGKILL

            names = sorted(p.name for p in tmp_path.iterdir())
            temps = [n for n in names if tmp_re.match(n)]
            assert set(names) <= {"checkpoint.pt", *temps}, names
            assert len(temps) - temps_before <= 1, f"kill {k} left {temps}"
            mid_write += len(temps) - temps_before
            temps_before = len(temps)
            if path.exists():
                obj = torch.load(path, weights_only=True)
                i, t = obj["i"], obj["t"]
                assert t.shape == (N,) and t.dtype == torch.int32
                assert bool((t == i).all()), f"kill {k}: values of different writes mixed"
                assert i >= last, "an older file replaced a newer one"
                complete += i >= base
                last = i
            else:
                assert last == -1, f"kill {k}: the previous complete file disappeared"
    finally:
        server.stdin.close()
        server.wait(timeout=30)
    # the test really hit both windows: some kills mid-write, some writes completed
    assert mid_write >= 1 and complete >= 1, (mid_write, complete)
    # partial files are dot files ending in .tmp: globs for the real file never match them
    assert list(tmp_path.glob("*.pt")) == [path]
