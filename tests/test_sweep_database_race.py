"""Two sweeps that start together on a new database: creating its tables is serialised.

Both processes wait at a barrier, then call ``open_database(path, create=True)`` on the same fresh
path; without a lock around "no meta table? create it" one of them failed with
``table meta already exists`` or ``database is locked`` in about half of the trials.
"""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
import stat

import pytest

from tiltedsam.harness.sweep import SCHEMA_VERSION, SweepError, open_database

TRIALS = 40


def _opener(barrier, root: str, errors) -> None:
    for trial in range(TRIALS):
        try:
            barrier.wait(timeout=60)
        except Exception:  # the other process failed: stop
            return
        try:
            open_database(f"{root}/t{trial}", create=True).close()
        except Exception as exc:  # recorded, not raised: the parent counts them
            errors.put(f"trial {trial}: {type(exc).__name__}: {exc}")


def test_two_processes_create_one_database_together(tmp_path):
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(2)
    errors = context.Queue()
    processes = [context.Process(target=_opener, args=(barrier, str(tmp_path), errors)) for _ in range(2)]
    for p in processes:
        p.start()
    for p in processes:
        p.join(timeout=120)
    failures = []
    while not errors.empty():
        failures.append(errors.get())
    assert all(p.exitcode == 0 for p in processes)
    assert failures == [], f"{len(failures)} of {2 * TRIALS} opens failed, e.g. {failures[:3]}"
    for trial in range(TRIALS):  # every database was created once, complete
        connection = sqlite3.connect(tmp_path / f"t{trial}" / "sweep.db")
        schema = connection.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        assert schema == (str(SCHEMA_VERSION),)
        connection.close()


def test_a_deleted_database_is_not_recreated_as_a_stub(tmp_path):
    """A sweep directory deleted mid-run: the next connection fails; no empty sweep.db appears."""
    from tiltedsam.harness.sweep import _connect, database_path

    open_database(tmp_path / "s", create=True).close()
    db = database_path(tmp_path / "s")
    for suffix in ("", "-wal", "-shm", ".lock"):
        (tmp_path / "s" / f"sweep.db{suffix}").unlink(missing_ok=True)
    with pytest.raises(SweepError, match="cannot open the sweep database"):
        _connect(db)
    assert not db.exists()


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root may write any folder")
def test_a_read_only_results_folder_can_be_read(tmp_path):
    """Reading opens the database read-only (immutable where SQLite could not write its WAL index)."""
    folder = tmp_path / "ro"
    open_database(folder, create=True).close()
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
    (folder / "sweep.db").chmod(stat.S_IRUSR)
    try:
        connection = open_database(folder, read_only=True)
        assert connection.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 0
        connection.close()
    finally:
        folder.chmod(stat.S_IRWXU)
        (folder / "sweep.db").chmod(stat.S_IRUSR | stat.S_IWUSR)


def test_a_reader_opens_the_database_read_only(tmp_path, monkeypatch):
    """What a report opens cannot write (so a read-only folder or file is enough), also as root; in a
    folder it cannot write, it is opened immutable (SQLite could not create the WAL index there)."""
    from tiltedsam.harness import sweep_safety

    open_database(tmp_path, create=True).close()
    connection = open_database(tmp_path, read_only=True)
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        connection.execute("INSERT INTO meta VALUES ('x', 'y')")
    connection.close()
    monkeypatch.setattr(sweep_safety.os, "access", lambda path, mode: False)  # a folder we cannot write
    assert sweep_safety.sqlite_uri(tmp_path / "sweep.db", "ro").endswith("?mode=ro&immutable=1")
    connection = open_database(tmp_path, read_only=True)
    assert connection.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == str(SCHEMA_VERSION)
    connection.close()
