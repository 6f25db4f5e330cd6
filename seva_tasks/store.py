"""Content-addressed stage artifacts: `data/artifacts/<stage>/<key>/` with `manifest.json` written last.

key(stage) = sha256(stage name, canonical stage config, each upstream's (key, output digest), the digest
of the stage's code (seva_tasks/fingerprint.py), external-input fingerprints (the model, data files)). The output digest hashes the published files, so a forced
rerun that reproduces the same bytes leaves downstream keys unchanged (early cutoff, as DVC/Bazel).

Publishing is atomic: a stage writes into `.<key>.partial/` under a per-key lock, the manifest goes
in last, then one `rename` makes it visible. A crash leaves only the partial dir, which the next run
either wipes or (for resumable stages such as `generate`) continues from.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from filelock import FileLock

from seva_tasks.errors import StageError

MANIFEST = "manifest.json"
# Failures of the disk rather than of the stage's logic: reported as a publish error.
_PUBLISH_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS}


def canonical(obj: Any) -> str:
    """Canonical JSON: sorted keys, no whitespace, paths and other objects as strings."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str, ensure_ascii=False)


def stage_key(stage: str, config: dict, upstream: dict[str, dict], code: Any, external: Any = None) -> str:
    """The cache key of one stage run; `upstream` maps name -> {"key", "digest"}, `code` is the stage's code digest."""
    ups = {name: {"key": ref["key"], "digest": ref["digest"]} for name, ref in upstream.items()}
    payload = canonical({"stage": stage, "config": config, "upstream": ups, "code": code, "external": external})
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def digest_dir(path: Path) -> tuple[str, list[dict]]:
    """Hash every published file except the manifest: (digest, [{path, bytes, sha256}])."""
    files = []
    for p in sorted(q for q in path.rglob("*") if q.is_file() and q.name != MANIFEST):
        files.append({"path": p.relative_to(path).as_posix(), "bytes": p.stat().st_size, "sha256": file_sha256(p)})
    return hashlib.sha256(canonical(files).encode()).hexdigest(), files


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """`write(tmp)` to a temp file beside `path`, fsync it, then rename: readers see the old file or the whole new one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json_atomic(path: Path, obj: Any) -> None:
    text = json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n"
    write_atomic(path, lambda tmp: tmp.write_text(text))


def publish_dir(partial: Path, final: Path) -> None:
    """Rename `partial` to `final`; a replaced `final` is moved aside first and deleted last.

    Each step is one rename, so readers see the old directory or the new one, never a mix; if the
    last rename fails, the old directory is put back.
    """
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.rename(final, old)
    try:
        os.rename(partial, final)
    except OSError:
        if old is not None:
            os.rename(old, final)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


class Store:
    """Published artifacts of every stage under one root (default `data/artifacts`)."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def dir(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def manifest(self, stage: str, key: str) -> dict | None:
        """The manifest of a published artifact, or None if it is absent (or was never finished)."""
        path = self.dir(stage, key) / MANIFEST
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return None

    def lock(self, stage: str, key: str) -> FileLock:
        """An exclusive per-key lock (flock underneath: released by the kernel if the holder dies)."""
        (self.root / stage).mkdir(parents=True, exist_ok=True)
        return FileLock(self.root / stage / f".{key}.lock")

    def build(
        self,
        stage: str,
        key: str,
        compute: Callable[[Path], dict],
        *,
        record: dict,
        force: bool = False,
        resumable: bool = False,
    ) -> dict:
        """Return the manifest for (stage, key), running `compute(out_dir) -> stats` if needed.

        `record` (config, upstream, code, model, external) goes into the manifest. With `force`, an existing
        artifact is rebuilt and replaced only once the new one is complete.
        """
        with self.lock(stage, key):
            if not force and (found := self.manifest(stage, key)) is not None:
                return found
            partial = self.root / stage / f".{key}.partial"
            if partial.exists() and not resumable:
                shutil.rmtree(partial)
            started = time.time()
            try:
                partial.mkdir(parents=True, exist_ok=True)
                stats = compute(partial)
                digest, files = digest_dir(partial)
                manifest = {
                    "stage": stage,
                    "key": key,
                    **record,
                    "stats": stats,
                    "timings": {"started": started, "seconds": round(time.time() - started, 3)},
                    "digest": digest,
                    "files": files,
                }
                write_json_atomic(partial / MANIFEST, manifest)
                publish_dir(partial, self.dir(stage, key))
            except OSError as e:
                if e.errno not in _PUBLISH_ERRNOS:
                    raise
                if not resumable:
                    shutil.rmtree(partial, ignore_errors=True)
                reason = "disk full" if e.errno == errno.ENOSPC else e.strerror or str(e)
                raise StageError(
                    f"Stage '{stage}' could not publish {self.dir(stage, key)}: {reason}. "
                    f"The previous artifact (if any) is unchanged; free space or fix permissions and rerun."
                ) from e
            return manifest
