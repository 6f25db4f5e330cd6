"""Identities of what a stage reads from outside the store: files, directories, and its own code.

`fingerprint(path)` is a content hash (sha256 over every file, names included) of a file or a
directory. A 7B checkpoint is hashed once: each file's hash is memoized by (size, mtime_ns) in
`.cache/fingerprints.json` under the project root, the quick check make, rsync and DVC use.

`code_digest(module)` hashes a stage's source and every project module it imports, transitively
(function-local imports included, third-party packages not), so editing `stages/filter.py`, or a
library it uses, makes filter and everything after it stale. A comment-only edit counts as a change.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path

from seva_tasks.base import ROOT
from seva_tasks.store import file_sha256

PACKAGE = "seva_tasks"
_MEMO = ROOT / ".cache" / "fingerprints.json"
_SRC = Path(__file__).resolve().parent  # the seva_tasks package this code runs from


def _read_memo() -> dict:
    try:
        return json.loads(_MEMO.read_text())
    except (OSError, ValueError):
        return {}


_memo: dict | None = None  # this process's view, read once


def _save_memo(new: dict) -> None:
    try:
        _MEMO.parent.mkdir(parents=True, exist_ok=True)
        tmp = _MEMO.with_name(f".{_MEMO.name}.{os.getpid()}")
        tmp.write_text(json.dumps({**_read_memo(), **new}, sort_keys=True))
        os.replace(tmp, _MEMO)  # concurrent writers: last one wins, a lost entry is just re-hashed
    except OSError:
        pass  # a read-only checkout still works, only slower


def fingerprint(path: Path | str, suffixes: tuple[str, ...] = ()) -> str | None:
    """sha256 of a file's bytes, or of a directory's (relative name, file hash) list, only files ending
    in `suffixes` if given; None if absent."""
    global _memo
    path = Path(path).resolve()
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and (not suffixes or p.suffix in suffixes))
    else:
        return None
    if _memo is None:
        _memo = _read_memo()
    memo, new, parts = _memo, {}, []
    for p in files:
        st = p.stat()
        stamp = [st.st_size, st.st_mtime_ns]
        entry = memo.get(str(p))
        if entry is None or entry[:2] != stamp:
            entry = memo[str(p)] = new[str(p)] = [*stamp, file_sha256(p)]
        parts.append((p.relative_to(path).as_posix() if p != path else "", entry[2]))
    if new:
        _save_memo(new)
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def _module_file(name: str) -> Path | None:
    """The source file of a project module, found without importing it (None: not a module, e.g. a class)."""
    base = _SRC.joinpath(*name.split(".")[1:])
    return next((p for p in (base.with_suffix(".py"), base / "__init__.py") if p.is_file()), None)


def _imports(path: Path, package: str) -> set[str]:
    """Project modules a file imports anywhere in it (`from X import Y` may name a submodule Y)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    out = set()
    for name in names:
        if name == PACKAGE or name.startswith(PACKAGE + "."):
            parts = name.split(".")  # importing a.b.c runs a/__init__ and a/b/__init__ too
            out.update(".".join(parts[:i]) for i in range(2, len(parts) + 1))
    return out


@lru_cache(maxsize=None)
def code_digest(module: str) -> str:
    """sha256 over the source of `module` and the project modules it imports, transitively."""
    seen: dict[str, Path] = {}
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen or (path := _module_file(name)) is None:
            continue
        seen[name] = path
        todo.extend(_imports(path, PACKAGE) - seen.keys())
    h = hashlib.sha256()
    for name in sorted(seen):
        h.update(name.encode() + b"\0" + hashlib.sha256(seen[name].read_bytes()).digest())
    return h.hexdigest()
