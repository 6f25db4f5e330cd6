"""The benchmark harness runs end to end in quick mode (tiny inputs, 1 run): keeps bench/ from rotting.

No thresholds here: speed is measured by `make bench`, not asserted in tests.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from seva_tasks.config import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]
IDS = {"P1", "P2", "P3", "P4", "P5", "P6", "P7", "P8", "P9", "P10"}


def test_bench_quick_writes_results_for_every_id(tmp_path):
    results, readme = tmp_path / "results.json", tmp_path / "README.md"
    readme.write_text("# bench\n\nintro kept\n\n<!-- results:start -->\nSTALE-TABLE\n<!-- results:end -->\n\ntail kept\n")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench/run.py"), "--quick", "--results", str(results), "--readme", str(readme),
         "--work", str(tmp_path / "work")],
        cwd=ROOT, capture_output=True, text=True, timeout=1700,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    got = json.loads(results.read_text())
    assert got["mode"] == "quick" and got["machine"]["cores"] >= 1
    assert {r["id"] for r in got["rows"]} == IDS
    failed = [r for r in got["rows"] if r.get("error")]
    assert not failed, failed
    for r in got["rows"]:
        if r["id"] != "P5":  # P5 (`make run`, minutes) is skipped in quick mode
            assert r["seva"]["runs"] and r["seva"]["median"] > 0, r
    text = readme.read_text()
    assert "intro kept" in text and "tail kept" in text and "STALE-TABLE" not in text
    assert all(f"| {pid} |" in text for pid in IDS)
