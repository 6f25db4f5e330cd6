"""Helpers every benchmark shares: child processes measured by the OS, summaries, result rows."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
PY = sys.executable


def measured(cmd: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 7200) -> dict:
    """Run `cmd` to completion: wall seconds (perf_counter), CPU seconds and peak RSS from the OS; raise on failure.

    The command runs under a small launcher (`python bench/common.py --rss FILE CMD…`) that forks it,
    reaps it with os.wait4 and writes its ru_maxrss. Why not wait4 from here: Linux carries the
    high-water RSS of the exec'ing process's old memory map into the new program's ru_maxrss, so a
    child spawned by this (torch-sized) process would report at least this process's peak. The
    launcher's own map is ~10 MiB, so that floor becomes negligible.
    """
    with tempfile.TemporaryDirectory() as tmp:
        rss_file = Path(tmp) / "rss.json"
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, __file__, "--rss", str(rss_file), *map(str, cmd)], env=env, cwd=cwd,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            raise RuntimeError(f"{' '.join(map(str, cmd[:4]))} … timed out after {timeout:.0f} s:\n{err.decode()[-4000:]}") from None
        seconds = time.perf_counter() - t0
        if proc.returncode != 0 or not rss_file.is_file():
            raise RuntimeError(f"{' '.join(map(str, cmd[:4]))} … failed ({proc.returncode}):\n{err.decode()[-4000:]}")
        rss = json.loads(rss_file.read_text())
    return {"seconds": seconds, "cpu_s": rss["cpu_s"], "peak_rss_mib": rss["maxrss_kib"] / 1024,
            "stdout": out.decode(), "stderr": err.decode()}


def _launch(rss_file: str, cmd: list[str]) -> int:
    """Launcher mode: fork+exec `cmd`, wait4 it, write its ru_maxrss (KiB) to `rss_file`, exit with its code."""
    pid = os.fork()
    if pid == 0:
        try:
            os.execvp(cmd[0], cmd)
        finally:
            os._exit(127)
    _, status, usage = os.wait4(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    Path(rss_file).write_text(json.dumps({"maxrss_kib": usage.ru_maxrss, "cpu_s": usage.ru_utime + usage.ru_stime, "exit": code}))
    return code


def summary(values: list[float], digits: int = 3) -> dict:
    """Median, min, max and every run, rounded."""
    return {"median": round(statistics.median(values), digits), "min": round(min(values), digits),
            "max": round(max(values), digits), "runs": [round(v, digits) for v in values]}


def row(pid: str, measure: str, unit: str, seva: dict, anchor: dict | None, *, seva_label: str, anchor_label: str = "",
        target: tuple[str, float] | None = None, better: str = "lower", note: str = "") -> dict:
    """One line of the results table: seva's path vs its anchor, the ratio and the target check.

    target: ("ratio<=", x), ("ratio>=", x) or ("value<=", x) (seva's median alone).
    """
    ratio = round(seva["median"] / anchor["median"], 3) if anchor and anchor["median"] else None
    met = None
    if target:
        kind, x = target
        value = seva["median"] if kind.startswith("value") else ratio
        met = None if value is None else (value <= x if kind.endswith("<=") else value >= x)
    return {"id": pid, "measure": measure, "unit": unit, "seva": {"label": seva_label, **seva},
            "anchor": {"label": anchor_label, **anchor} if anchor else None, "ratio": ratio,
            "target": _target_text(target), "met": met, "better": better, "note": note}


def _target_text(target: tuple[str, float] | None) -> str:
    if not target:
        return ""
    kind, x = target
    op = "≤" if kind.endswith("<=") else "≥"
    return f"{op} {x:g}×" if kind.startswith("ratio") else f"{op} {x:g}"


def env_for(**extra: str) -> dict[str, str]:
    """This process's environment for a benchmark child: offline hub, the project on the path."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    env.update(extra)
    return env


if __name__ == "__main__" and sys.argv[1:2] == ["--rss"]:
    sys.exit(_launch(sys.argv[2], sys.argv[3:]))
