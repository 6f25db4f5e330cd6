"""The README quotes each experiment's table, put there by the experiment itself, never a number typed in."""

from __future__ import annotations

import subprocess
from pathlib import Path

from seva_tasks.store import write_atomic


def _provenance(root: Path, out: Path) -> str:
    """The README's ' at commit X' for the checkout at `root`, plus ' with uncommitted changes' when a tracked file
    other than the experiment's outputs and the README differs from X: a table measured on edited code or presets
    must not read as if X reproduces it."""

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)

    head = git("rev-parse", "--short", "HEAD")
    if head.returncode:
        return ""
    out, root = out.resolve(), root.resolve()
    skip = [":(exclude)README.md"] + ([f":(exclude){out.relative_to(root)}"] if out.is_relative_to(root) else [])
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".", *skip).stdout.strip()
    return f" at commit {head.stdout.strip()}" + (" with uncommitted changes" if dirty else "")


def publish(out: Path, readme: Path) -> bool:
    """Put `out`'s table.md into `readme` between `<!-- experiments/<name>: begin -->` and `... end -->`,
    so the README quotes what the experiment measured, never a number typed in. False: no such markers."""
    begin, end = f"<!-- experiments/{out.name}: begin -->", f"<!-- experiments/{out.name}: end -->"
    text = readme.read_text() if readme.is_file() else ""
    if begin not in text or end not in text:
        return False
    at = _provenance(readme.parent, out)
    body = (f"*Written by `seva experiment` from `experiments/{out.name}/`{at}: "
            f"[table.md](experiments/{out.name}/table.md), `runs.jsonl`, `verdict.json`, `plots/`.*\n\n"
            + (out / "table.md").read_text())
    new = text[: text.index(begin) + len(begin)] + "\n" + body + text[text.index(end):]
    write_atomic(readme, lambda tmp: tmp.write_text(new))
    return True
