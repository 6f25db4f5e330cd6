"""P5: the README's main command (`make run`) on the embedded default, after install, timed.

A copy of this checkout (tracked + untracked-not-ignored files, mtimes kept) goes to a scratch dir,
with `.venv` and `.venv-vllm` linked in (that is "after install"), and no `data/`: so the run builds
the toy world and every stage from nothing, on its own Prefect server (own PREFECT_HOME, a free port
on 127.0.0.1). `make -o` marks the env stamps as up to date so make can never reinstall into the
linked envs. The run must end with `seva status` reporting every stage fresh (make fails otherwise).
Then `make stop` stops the server and worker it started.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path


def copy_checkout(root: Path, dest: Path) -> Path:
    """Tracked and untracked-but-not-ignored files of `root` into `dest`, mtimes kept; envs linked."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=root, check=True,
                           capture_output=True).stdout.decode().split("\0")
    shutil.rmtree(dest, ignore_errors=True)
    for rel in filter(None, files):
        src = root / rel
        if src.is_file() and not rel.startswith(("bench/_work/", "data/")):
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    for env in (".venv", ".venv-vllm"):
        os.symlink(root / env, dest / env)
    (dest / "data").mkdir(exist_ok=True)
    return dest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_once(checkout: Path) -> dict:
    """`make run` in the copy (fresh data/ and .prefect/), then `make stop`; wall seconds and the log tail."""
    for d in ("data", ".prefect"):
        shutil.rmtree(checkout / d, ignore_errors=True)
    (checkout / "data").mkdir()
    port = str(_free_port())
    # A clean shell, as a new user's: `make run` and seva set Prefect up themselves (seva_tasks/serve.py).
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "SEVA_", "VIRTUAL_ENV"))}
    make = ["make", "-o", ".venv/.installed", "-o", ".venv-vllm/.installed", f"PORT={port}"]
    t0 = time.perf_counter()
    proc = subprocess.run([*make, "run"], cwd=checkout, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    subprocess.run([*make, "stop"], cwd=checkout, env=env, capture_output=True, text=True)
    log = (proc.stdout + proc.stderr)[-4000:]
    if proc.returncode != 0:
        raise RuntimeError(f"`make run` failed ({proc.returncode}) after {seconds:.0f} s:\n{log}")
    return {"seconds": seconds, "log_tail": log[-800:]}


def bench(work: Path, *, runs: int) -> list[dict]:
    sys.path.insert(0, str(Path(__file__).parent))
    from common import ROOT, row, summary

    checkout = copy_checkout(ROOT, work.resolve() / "p5-checkout")
    try:
        res = [run_once(checkout) for _ in range(runs)]
    finally:
        subprocess.run(["make", "stop"], cwd=checkout, capture_output=True)
        shutil.rmtree(checkout, ignore_errors=True)
    s = summary([r["seconds"] for r in res], 1)
    note = ("fresh copy of the checkout, envs installed, no data/: toy world + every stage + Prefect server/worker "
            "start; ends with `seva status` all fresh")
    out = row("P5", "`make run` on the embedded default, after install", "s", s, None,
              seva_label="make run", target=("value<=", 600.0), note=note)
    return [out]
