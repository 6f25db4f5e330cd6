"""The stage store: keys, atomic publish, locking, crash and disk-error behaviour."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from seva_tasks.errors import StageError
from seva_tasks.store import MANIFEST, Store, digest_dir, stage_key

REC = {"config": {"a": 1}, "upstream": {}, "version": 1}


def _write(text: str):
    def compute(out: Path) -> dict:
        (out / "data.txt").write_text(text)
        return {"counts": {"rows": len(text)}}

    return compute


def test_key_changes_with_config_upstream_digest_and_version():
    base = stage_key("s", {"a": 1}, {"u": {"key": "k", "digest": "d"}}, 1)
    assert base == stage_key("s", {"a": 1}, {"u": {"key": "k", "digest": "d"}}, 1)
    assert base != stage_key("s", {"a": 2}, {"u": {"key": "k", "digest": "d"}}, 1)
    assert base != stage_key("s", {"a": 1}, {"u": {"key": "k", "digest": "d2"}}, 1)
    assert base != stage_key("s", {"a": 1}, {"u": {"key": "k", "digest": "d"}}, 2)
    assert base != stage_key("t", {"a": 1}, {"u": {"key": "k", "digest": "d"}}, 1)


def test_build_publishes_manifest_last_and_hits_cache(tmp_path):
    store = Store(tmp_path)
    calls = []

    def compute(out: Path) -> dict:
        calls.append(1)
        return _write("hello")(out)

    m1 = store.build("s", "k1", compute, record=REC)
    m2 = store.build("s", "k1", compute, record=REC)
    assert len(calls) == 1
    assert m1["digest"] == m2["digest"] == digest_dir(tmp_path / "s" / "k1")[0]
    assert m1["stats"]["counts"] == {"rows": 5}
    assert json.loads((tmp_path / "s" / "k1" / MANIFEST).read_text())["config"] == {"a": 1}


def test_crash_mid_write_publishes_nothing_and_next_run_starts_clean(tmp_path):
    store = Store(tmp_path)

    def crash(out: Path) -> dict:
        (out / "half.txt").write_text("half")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        store.build("s", "k", crash, record=REC)
    assert not (tmp_path / "s" / "k").exists()
    m = store.build("s", "k", _write("ok"), record=REC)
    assert [f["path"] for f in m["files"]] == ["data.txt"]  # the half-written file is gone


def test_kill_9_mid_write_leaves_no_published_dir(tmp_path):
    script = textwrap.dedent(
        f"""
        import time
        from pathlib import Path
        from seva_tasks.store import Store
        def slow(out):
            (out / "part.txt").write_text("x")
            Path({str(tmp_path / "started")!r}).write_text("1")
            time.sleep(60)
            return {{}}
        Store(Path({str(tmp_path)!r})).build("s", "k", slow, record={{"config": {{}}, "upstream": {{}}, "version": 1}})
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.time() + 30
    while not (tmp_path / "started").exists():
        assert time.time() < deadline
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "s" / "k").exists()
    # The lock died with the process: a new build proceeds at once.
    m = Store(tmp_path).build("s", "k", _write("fresh"), record=REC)
    assert [f["path"] for f in m["files"]] == ["data.txt"]


def test_concurrent_builds_of_one_key_compute_once(tmp_path):
    script = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from seva_tasks.store import Store
        def compute(out):
            with open({str(tmp_path / "calls")!r}, "a") as f:
                f.write("x")
            time.sleep(1.0)
            (out / "data.txt").write_text("same")
            return {{}}
        m = Store(Path({str(tmp_path)!r})).build("s", "k", compute, record={{"config": {{}}, "upstream": {{}}, "version": 1}})
        print(m["digest"])
        """
    )
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    digests = {p.communicate()[0].strip() for p in procs}
    assert all(p.returncode == 0 for p in procs)
    assert (tmp_path / "calls").read_text() == "x"
    assert len(digests) == 1


def test_disk_full_while_publishing_keeps_previous_artifact(tmp_path):
    store = Store(tmp_path)
    store.build("s", "k", _write("v1"), record=REC)

    def full(out: Path) -> dict:
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(StageError, match="disk full"):
        store.build("s", "k", full, record=REC, force=True)
    assert (tmp_path / "s" / "k" / "data.txt").read_text() == "v1"
    assert not (tmp_path / "s" / ".k.partial").exists()


def test_permission_denied_on_rename_keeps_previous_artifact(tmp_path, monkeypatch):
    store = Store(tmp_path)
    store.build("s", "k", _write("v1"), record=REC)
    real_rename = os.rename

    def deny(src, dst):
        if str(src).endswith(".partial"):
            raise PermissionError(errno.EACCES, "Permission denied", str(dst))
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", deny)
    with pytest.raises(StageError, match="Permission denied"):
        store.build("s", "k", _write("v2"), record=REC, force=True)
    assert (tmp_path / "s" / "k" / "data.txt").read_text() == "v1"
    assert (tmp_path / "s" / "k" / MANIFEST).exists()


def test_forced_rebuild_with_same_bytes_keeps_digest(tmp_path):
    store = Store(tmp_path)
    d1 = store.build("s", "k", _write("same"), record=REC)["digest"]
    d2 = store.build("s", "k", _write("same"), record=REC, force=True)["digest"]
    d3 = store.build("s", "k", _write("different"), record=REC, force=True)["digest"]
    assert d1 == d2 != d3


def test_resumable_stage_keeps_partial_work(tmp_path):
    store = Store(tmp_path)

    def first(out: Path) -> dict:
        (out / "shard-0.txt").write_text("done")
        raise RuntimeError("crash after shard 0")

    with pytest.raises(RuntimeError):
        store.build("g", "k", first, record=REC, resumable=True)
    seen = []

    def second(out: Path) -> dict:
        seen.extend(sorted(p.name for p in out.iterdir()))
        return {}

    store.build("g", "k", second, record=REC, resumable=True)
    assert seen == ["shard-0.txt"]
