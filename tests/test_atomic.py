"""Atomic writes: a failed write leaves the previous file intact and no temporary file behind."""

import pytest

from tiltedsam._atomic import atomic_write, atomic_write_with


def test_atomic_write_replaces_the_file_and_creates_folders(tmp_path):
    target = tmp_path / "deep" / "report.md"
    atomic_write(target, "first")
    atomic_write(target, b"second")
    assert target.read_text() == "second"
    assert sorted(p.name for p in target.parent.iterdir()) == ["report.md"]


def test_a_failing_writer_keeps_the_old_file_and_cleans_up(tmp_path):
    target = tmp_path / "checkpoint.pt"
    target.write_text("good checkpoint")

    def crash(temporary):
        with open(temporary, "w") as stream:
            stream.write("half-writ")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write_with(target, crash)
    assert target.read_text() == "good checkpoint"
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664), (0o077, 0o600)])
def test_written_files_follow_the_umask_like_open_does(tmp_path, umask, mode):
    import os
    import stat

    old = os.umask(umask)
    try:
        text = atomic_write(tmp_path / f"report-{umask:o}.md", "x")
        binary = atomic_write_with(tmp_path / f"fig-{umask:o}.png", lambda tmp: open(tmp, "wb").close())
    finally:
        os.umask(old)
    assert stat.S_IMODE(text.stat().st_mode) == mode
    assert stat.S_IMODE(binary.stat().st_mode) == mode
