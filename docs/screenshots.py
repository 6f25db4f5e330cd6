"""`make screenshots`: docs/flow-run.png and docs/evaluate-report.png, from a toy run, taken in Chromium.

    make screenshots                                   # the toy preset as `make run` runs it
    make screenshots SCREENSHOTS_ARGS=--quick          # tests/test_ui.py's small overrides: minutes, not tens

Runs `seva/full` through a temporary local Prefect server and worker (a free port; Prefect state and
the run's data in a temp dir, so neither a server on :4200 nor data/ is touched), then opens the flow
run page and the evaluate-report artifact in headless Chromium (Debian's, /usr/bin/chromium, driven by
Playwright) and saves the two PNGs the README shows. Nothing here is drawn by hand.
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from seva_tasks import serve  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
# 200 pretraining steps (~40 s) make answers depend on the image (at 40 the model says "A" to everything, so
# every pair ties); noise step 999 destroys the image, so ~14 of 36 pairs differ and survive the filter.
QUICK = {"sample.subsets": {"ocr_vqa": {"images": 12, "questions_per_image": 2},
                            "textvqa": {"images": 12, "questions_per_image": 1}},
         "pretrain.steps": 200, "pretrain.logging_steps": 20, "pretrain.heldout": 8, "pretrain.extra": {},
         "augment.noise_step": 999, "filter.mode": "seva", "train.max_steps": 2,
         "evaluate.benchmarks": ["pope", "mme", "sqa"]}
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
VIEWPORT = {"width": 1440, "height": 1000}
REPORT_VIEWPORT = {"width": 1440, "height": 1500}  # the table and the whole per-benchmark plot, ten benchmarks


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_full(port: int, home: Path, overrides: dict) -> str:
    """`prefect deployment run seva/full --watch`; returns the flow run id."""
    out = subprocess.run([str(ROOT / ".venv/bin/prefect"), "deployment", "run", "seva/full", "--watch",
                          "--params", json.dumps({"overrides": overrides})],
                         env=serve.prefect_env(port, home), cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"seva/full failed:\n{out.stdout[-3000:]}{out.stderr[-3000:]}")
    return UUID.search(out.stdout).group(0)


def artifact_id(port: int, flow_run: str, key: str) -> str:
    found = httpx.post(f"{serve.api_url(port)}/artifacts/filter",
                       json={"artifacts": {"flow_run_id": {"any_": [flow_run]}, "key": {"any_": [key]}}}).json()
    if not found:
        sys.exit(f"flow run {flow_run} published no {key!r} artifact.")
    return found[0]["id"]


def photograph(port: int, flow_run: str, report: str, out: Path) -> None:
    from playwright.sync_api import sync_playwright

    ui = f"http://127.0.0.1:{port}"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport=VIEWPORT)
        page.goto(f"{ui}/runs/flow-run/{flow_run}")
        page.get_by_text("Completed").first.wait_for(timeout=60_000)
        page.wait_for_timeout(4000)  # the run graph and the logs load after the header
        page.screenshot(path=str(out / "flow-run.png"))
        page.set_viewport_size(REPORT_VIEWPORT)
        page.goto(f"{ui}/artifacts/artifact/{report}")
        page.wait_for_function("document.images.length >= 2 && [...document.images].every(i => i.complete)",
                               timeout=60_000)
        widths = page.evaluate("[...document.images].map(i => i.naturalWidth)")
        if not all(widths):
            sys.exit(f"a picture of the report did not load (naturalWidth {widths}).")
        page.screenshot(path=str(out / "evaluate-report.png"))
        browser.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small overrides instead of the toy preset as is")
    ap.add_argument("--out", type=Path, default=ROOT / "docs", help="where the PNGs go (default: docs/)")
    args = ap.parse_args()
    if not Path(CHROMIUM).exists():
        sys.exit(f"No Chromium at {CHROMIUM}: `apt-get install -y chromium` (or `make screenshots`, which does).")
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="seva-screenshots-") as tmp:
        home, port, t0 = Path(tmp) / "prefect", free_port(), time.time()
        serve.start(port, home)
        try:
            overrides = {**(QUICK if args.quick else {}), "data_dir": str(Path(tmp) / "data")}
            flow_run = run_full(port, home, overrides)
            photograph(port, flow_run, artifact_id(port, flow_run, "evaluate-report"), args.out)
        finally:
            serve.stop(home)
    print(f"Wrote {args.out / 'flow-run.png'} and {args.out / 'evaluate-report.png'} ({time.time() - t0:.0f} s).")


if __name__ == "__main__":
    main()
