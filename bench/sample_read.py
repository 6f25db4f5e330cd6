"""P2: the `sample` stage on a 665k-record LLaVA mix vs SeVa's way (`json.load` + a Python loop).

    .venv/bin/python bench/sample_read.py seva   MIX ROOT DATA_DIR OCR TEXT   # one measured child
    .venv/bin/python bench/sample_read.py anchor MIX OUT OCR TEXT

seva: `pipeline.run_stage(cfg, "sample", {})` into a fresh data dir — the whole stage as a run does
it: mmap + msgspec split, seeded draw with image checks, Parquet, manifest, atomic publish.
anchor: SeVa's data/step1 (`split_data.py` then `make_{ocrvqa,textvqa}_data.py`) in one process:
`json.load` of the mix, a loop splitting records by the image path's first component,
`random.sample` of the same counts, the same stripping, JSONL out. SeVa also writes the two split
files and loads them again; the anchor skips that (it would only make the anchor slower). It checks
no images; seva opens and decodes every drawn image.
Each side runs in its own child process; wall time from the parent, peak RSS from os.wait4.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from seva_tasks.llava.prompts import SHORT_ANSWER as OCR_SUFFIX

PAPER = {"ocr_vqa": 4000, "textvqa": 8000}


def run_seva(mix: str, root: str, data_dir: str, ocr: int, text: int) -> dict:
    from seva_tasks import pipeline
    from seva_tasks.config import PipelineConfig
    from seva_tasks.stages.sample import SampleConfig

    t0 = time.perf_counter()
    cfg = PipelineConfig(data_dir=Path(data_dir), sample=SampleConfig(
        annotations=Path(mix), image_root=Path(root), subsets={"ocr_vqa": {"images": ocr}, "textvqa": {"images": text}}))
    ref = pipeline.run_stage(cfg, "sample", {})
    stats = json.loads((Path(ref["path"]) / "manifest.json").read_text())["stats"]
    return {"inner_s": time.perf_counter() - t0, "rows": stats["counts"]["rows"], "stage_seconds": stats["seconds"],
            "drops": stats["drops"]}


def _clean(q: str, subset: str) -> str:
    if subset == "ocr_vqa":  # make_ocrvqa_data.py
        return q.replace("<image>", "").replace(OCR_SUFFIX, "").replace("\n", "")
    return q.replace("<image>\n", "")  # make_textvqa_data.py


def run_anchor(mix: str, out: str, ocr: int, text: int) -> dict:
    import random

    t0 = time.perf_counter()
    with open(mix) as f:
        data = json.load(f)
    split: dict[str, list] = {"ocr_vqa": [], "textvqa": []}
    for item in data:  # split_data.py
        if "image" in item:
            src = item["image"].split("/")[0]
            if src in split:
                split[src].append(item)
    rng, rows = random.Random(0), []
    for subset, n in (("ocr_vqa", ocr), ("textvqa", text)):
        for item in rng.sample(split[subset], min(n, len(split[subset]))):
            qs = [_clean(t["value"], subset) for t in item["conversations"] if t["from"] == "human"]
            for q in rng.sample(qs, min(2, len(qs))):
                rows.append({"image": item["image"].split("/")[-1], "text": q})
    with open(out, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return {"inner_s": time.perf_counter() - t0, "rows": len(rows)}


def bench(work: Path, *, records: int, runs: int) -> list[dict]:
    """Generate (once) the mix, then alternate anchor and seva children `runs` times."""
    import shutil

    sys.path.insert(0, str(Path(__file__).parent))
    import mix665k
    from common import PY, env_for, measured, row, summary

    mix, root, info = mix665k.ensure(work, records)
    scale = min(1.0, records / sum(mix665k.SOURCES.values()))
    ocr, text = (max(1, round(n * scale)) for n in PAPER.values())
    with open(mix, "rb") as f:  # page cache warm for both sides
        while f.read(1 << 24):
            pass
    me, env = str(Path(__file__).resolve()), env_for(OMP_NUM_THREADS="1")
    res: dict[str, list[dict]] = {"seva": [], "anchor": []}
    for i in range(runs):
        for side in ("anchor", "seva") if i % 2 == 0 else ("seva", "anchor"):
            scratch = work / f"p2-{side}"
            shutil.rmtree(scratch, ignore_errors=True)
            scratch.mkdir(parents=True)
            args = [str(root), str(scratch / "data")] if side == "seva" else [str(scratch / "out.jsonl")]
            m = measured([PY, me, side, str(mix), *args, str(ocr), str(text)], env=env)
            res[side].append({**m, **json.loads(m["stdout"].strip().splitlines()[-1])})
            shutil.rmtree(scratch, ignore_errors=True)
    what = f"{info['records']:,} records, {info['bytes'] / 2**30:.2f} GiB; draw ocr_vqa {ocr:,} + textvqa {text:,}"
    s_rows, a_rows = res["seva"][0]["rows"], res["anchor"][0]["rows"]
    cpu = {k: summary([r["cpu_s"] for r in v]) for k, v in res.items()}
    note = (f"{what}. Rows out: seva {s_rows:,}, anchor {a_rows:,}. seva also decodes every drawn image "
            f"(the anchor checks none). CPU seconds (median, less sensitive to the shared box's load): seva "
            f"{cpu['seva']['median']}, anchor {cpu['anchor']['median']} ({cpu['seva']['median'] / cpu['anchor']['median']:.2f}×). "
            f"Stage split (last run, s): {res['seva'][-1]['stage_seconds']}.")
    t = {k: summary([r["seconds"] for r in v]) for k, v in res.items()}
    m = {k: summary([r["peak_rss_mib"] for r in v], 1) for k, v in res.items()}
    labels = dict(seva_label="sample stage (run_stage)", anchor_label="json.load + loop (SeVa split_data.py)")
    return [row("P2", f"wall time, {info['records']:,}-record mix", "s", t["seva"], t["anchor"], target=("ratio<=", 0.5), note=note, **labels),
            row("P2", f"peak RSS, {info['records']:,}-record mix", "MiB", m["seva"], m["anchor"], target=("ratio<=", 0.5), **labels)]


if __name__ == "__main__":
    kind, *a = sys.argv[1:]
    if kind == "seva":
        out = run_seva(a[0], a[1], a[2], int(a[3]), int(a[4]))
    else:
        out = run_anchor(a[0], a[1], int(a[2]), int(a[3]))
    print(json.dumps(out))
