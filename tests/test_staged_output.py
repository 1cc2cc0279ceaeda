"""``staged_output``: the folder export and translate write through, replaced only when done."""

from __future__ import annotations

from pathlib import Path

import pytest

from dmad.compress.errors import DmadError
from dmad.compress.runfolder import staged_output


def _write(out: Path, text: str) -> None:
    with staged_output(out, True, "done.json", "thing") as tmp:
        (tmp / "done.json").write_text(text)


def test_a_finished_block_becomes_the_folder_and_leaves_no_scratch(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _write(out, "1")
    _write(out, "2")  # force replaces an earlier output
    assert (out / "done.json").read_text() == "2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_failed_block_keeps_the_old_folder_whole(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _write(out, "old")
    with pytest.raises(RuntimeError), staged_output(out, True, "done.json", "thing") as tmp:
        (tmp / "done.json").write_text("half")
        raise RuntimeError("killed midway")
    assert (out / "done.json").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_users_folder_or_an_earlier_output_without_force_is_refused(tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "holiday.jpg").write_bytes(b"precious")
    with pytest.raises(DmadError, match="holds no dmad thing"), \
            staged_output(mine, True, "done.json", "thing"):
        pass
    assert (mine / "holiday.jpg").read_bytes() == b"precious"
    out = tmp_path / "out"
    _write(out, "1")
    with pytest.raises(DmadError, match="--force"), staged_output(out, False, "done.json",
                                                                  "thing"):
        pass
    (tmp_path / "file").write_text("x")
    with pytest.raises(DmadError, match="is a file"), staged_output(tmp_path / "file", True,
                                                                    "done.json", "thing"):
        pass


def test_scratch_of_a_killed_run_is_cleared(tmp_path: Path) -> None:
    stale = tmp_path / ".out.dmad-tmp-99999"
    stale.mkdir()
    _write(tmp_path / "out", "1")
    assert not stale.exists()
