"""seva's performance harness: P1–P10, each measured beside its anchor in the same run.

    make bench                                  # = .venv/bin/python bench/run.py (full, ~2 h on 2 busy cores)
    .venv/bin/python bench/run.py --quick       # tiny inputs, 1 run, no P5 (CI: tests/test_bench.py)
    .venv/bin/python bench/run.py --only P2 P6  # some ids; the others are kept from results.json

Writes `bench/results.json` and regenerates the results table in `bench/README.md` (between the
`<!-- results -->` markers). Every row: seva's path vs its anchor on the same inputs, median of
`--runs` runs (min–max), the ratio seva/anchor, the target and whether it is met. Targets are
checked, never asserted: a missed target is reported with its margin (see bench/README.md).

| id | seva path | anchor (same run) | target |
|---|---|---|---|
| P1 | generate engine: vLLM, 256 toy prompts with images, 16 and 64 new tokens | HF `generate` batch 1 (SeVa) / HF batched | ≥10× HF batch-1 tokens/s |
| P2 | sample stage on a 665k-record LLaVA-mix-shaped JSON (~1 GB) | `json.load` + Python loop (SeVa `split_data.py`) | ≤0.5× time and peak RSS |
| P3 | no-op rerun of the `seva` flow; rerun after one changed setting | `pipeline.status` (hash checks only) | body ≤5 s, all Cached; exactly the changed stage + downstream rerun |
| P4 | DPO + LoRA, reference = adapter-disabled policy | second full reference model (SeVa) | peak RSS ≤0.6× |
| P5 | `make run` on the embedded default after install | — | ≤10 min |
| P6 | diffusion-noise augmentation, batched | per-image loop (SeVa's function) | ≥5× |
| P7 | DPO batches: `PreferenceCollator` (LLaVA's preprocess_v1, tokenized whole) | TRL's vision collator | ≥0.5× pairs/s |
| P8 | generation through the Ray backend (one-node Ray, one actor) | the local backend (one worker process), same shards | ≤1.5× wall time |
| P9 | POPE answers + AUROC of p(yes), log-probabilities kept by the engine | the same answers, then a transformers pass for p(yes) | ≤0.75× wall time |
| P10 | the miniature's `vicuna` and `tower` stages on 2 torch threads | the same stages on 1 | ≤0.75× wall time |
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("TQDM_DISABLE", "1")  # stage progress bars would bury the report
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from common import BENCH, PY, ROOT, env_for, measured, row, summary  # noqa: E402

IDS = ("P1", "P2", "P3", "P4", "P5", "P6", "P7", "P8", "P9", "P10")
START, END = "<!-- results:start -->", "<!-- results:end -->"


# ---------------------------------------------------------------------------------------- P1
def p1(work: Path, quick: bool, runs: int) -> list[dict]:
    """Generation throughput through bench/generate_throughput.py's engine runner.

    Two answer budgets on the toy model: 16 new tokens (image preprocessing and prefill weigh most)
    and 64 (decoding weighs most, closer to SeVa's 512-token answers). The toy model has 0.4M params,
    so every engine there is bound by per-step overhead, not arithmetic; a third case runs a scaled
    random LLaVA (~60M params, the toy's wiring, bench/dpo_memory.py) where the model's compute
    counts, as it does for a 7B. Random base models never stop early, so every request generates
    the full budget on every engine. Each run starts each engine in its own process (load and an
    8-request warm-up excluded from the timing), engines in rotating order, so that load swings on
    a shared machine hit every engine alike.
    """
    import dpo_memory
    import generate_throughput as G

    n, hf_batch = (8, 4) if quick else (256, 16)
    req = work / "p1-requests.parquet"
    G._requests(n, req)
    engines = [("hf1", "hf", 1, Path(PY)), ("hfb", "hf", hf_batch, Path(PY)), ("vllm", "vllm", 1, ROOT / ".venv-vllm/bin/python")]
    cases = [("toy", ROOT / "data/toy/model", "toy LLaVA (0.4M params)", b) for b in ((4,) if quick else (16, 64))]
    if not quick:
        scaled = work / "p1-scaled-model"
        if not (scaled / "config.json").is_file():
            dpo_memory._scaled_model(scaled, **dpo_memory.SIZES["scaled"])
        cases.append(("scaled", scaled, "scaled random LLaVA (~60M params)", 16))
    out = []
    for size, model, desc, budget in cases:
        args = argparse.Namespace(model=str(model), dtype="float32", max_new_tokens=budget,
                                  max_model_len=512, runs=1, kv_cache_bytes=256 << 20)
        tps: dict[str, list[float]] = {k: [] for k, *_ in engines}
        load: dict[str, list[float]] = {k: [] for k, *_ in engines}
        for i in range(runs):
            for k, engine, batch, python in engines[i % 3:] + engines[: i % 3]:
                r = G._run_engine(f"{k} ({size}, {budget} tokens, run {i + 1})", engine, batch, python, args, req)
                tps[k].append(r["gen_tokens"] / r["runs_s"][0])
                load[k].append(r["load_s"])
        s = {k: summary(v, 1) for k, v in tps.items()}
        note = (f"{n} prompts (half SeVa exact-noise), greedy, {budget} new tokens each, float32, {desc}; "
                "engine load s (median): " + ", ".join(f"{k} {summary(v, 1)['median']}" for k, v in load.items()))
        hf1 = dict(anchor_label="HF generate, batch 1 (SeVa)", better="higher")
        what = f"generate, {size} model, {budget} new tokens"
        out += [row("P1", f"{what}: vLLM vs HF batch 1", "tok/s", s["vllm"], s["hf1"],
                    seva_label="vLLM engine", target=("ratio>=", 10), note=note, **hf1),
                row("P1", f"{what}: HF batch {hf_batch} vs HF batch 1", "tok/s", s["hfb"], s["hf1"],
                    seva_label=f"HF generate, batch {hf_batch}", **hf1)]
    return out


# ---------------------------------------------------------------------------------------- P2
def p2(work: Path, quick: bool, runs: int) -> list[dict]:
    import sample_read

    return sample_read.bench(work, records=20_000 if quick else 665_298, runs=runs)


# ---------------------------------------------------------------------------------------- P3
def p3(work: Path, quick: bool, runs: int) -> list[dict]:
    import flow_cache

    return flow_cache.bench(work, runs=runs, quick=quick)


# ---------------------------------------------------------------------------------------- P4
LARGE = {"hidden_size": 1024, "layers": 12}  # ~0.3B params, ~1.3 GiB fp32: where weights start to dominate
STEPS = {"toy": 3, "scaled": 3, "large": 1}  # the peak comes with the first optimizer step; large steps take ~1 min


def p4(work: Path, quick: bool, runs: int) -> list[dict]:
    """bench/dpo_memory.py's variants (its --child mode), `runs` times each, interleaved; plus an import-only floor.

    Each child runs under common.measured's launcher (dpo_memory.measure's direct wait4 would report
    at least this process's own peak, see common.py).
    """
    import dpo_memory as D

    from seva_tasks import toy

    toy.ensure(toy.ToyConfig())
    sizes = {"toy": None} if quick else {**D.SIZES, "large": LARGE}
    out = []
    pairs = D._pairs(_fresh(work / "p4"), 16)
    env = env_for(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    floor = summary([measured([PY, "-c", "import torch, transformers, trl, peft, datasets"], env=env)["peak_rss_mib"]
                     for _ in range(runs)], 1)
    for size, shape in sizes.items():
        steps = 1 if quick else STEPS.get(size, 1)
        model = toy.model_dir(toy.ToyConfig()) if shape is None else D._scaled_model(work / "p4" / size, **shape)
        got: dict[str, list[float]] = {v: [] for v in D.VARIANTS}
        for _ in range(runs):
            for v in D.VARIANTS:
                cmd = [PY, D.__file__, "--child", v, "--model", model, "--pairs", pairs, "--out", _fresh(work / "p4" / "out"),
                       "--steps", str(steps)]
                got[v].append(measured(cmd, env=env)["peak_rss_mib"])
        s = {v: summary(x, 1) for v, x in got.items()}
        params = D._params(model)
        inc = (s["adapter"]["median"] - floor["median"]) / max(s["copy"]["median"] - floor["median"], 1e-9)
        note = (f"{params / 1e6:.1f}M params ({params * 4 / 2**20:.0f} MiB fp32), {steps} DPO steps, batch 4, LoRA r 8. "
                f"Import-only floor {floor['median']:.0f} MiB; one model loaded, no trainer {s['load']['median']:.0f} MiB; "
                f"copy − adapter {s['copy']['median'] - s['adapter']['median']:+.0f} MiB; above the floor: adapter/copy = {inc:.2f}")
        out.append(row("P4", f"DPO peak RSS, {size} model", "MiB", s["adapter"], s["copy"], target=("ratio<=", 0.6),
                       seva_label="ref = adapter-disabled policy", anchor_label="ref = second full copy (SeVa)", note=note))
    return out


def _fresh(d: Path) -> Path:
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    return d


# ---------------------------------------------------------------------------------------- P5
def p5(work: Path, quick: bool, runs: int) -> list[dict]:
    import main_command

    if quick:
        return [{"id": "P5", "measure": "`make run` on the embedded default, after install", "skipped": "quick mode",
                 "target": "≤ 600 s", "met": None}]
    return main_command.bench(work, runs=runs)


# ---------------------------------------------------------------------------------------- P6
def p6(work: Path, quick: bool, runs: int) -> list[dict]:
    import augment_batch

    # ≥5 runs in full mode: the per-image loop's time swings 3x with the shared box's load
    return augment_batch.bench(work, n=16 if quick else 256, runs=runs if quick else max(runs, 5))


# ---------------------------------------------------------------------------------------- P7
def p7(work: Path, quick: bool, runs: int) -> list[dict]:
    import collator

    return collator.bench(work, n=32 if quick else 512, runs=runs if quick else max(runs, 5))


# ---------------------------------------------------------------------------------------- P8
def p8(work: Path, quick: bool, runs: int) -> list[dict]:
    import ray_backend

    return ray_backend.bench(work / "p8", quick, runs)


# ---------------------------------------------------------------------------------------- P9
def p9(work: Path, quick: bool, runs: int) -> list[dict]:
    import pope_auroc

    return pope_auroc.bench(work / "p9", quick, runs)


# ---------------------------------------------------------------------------------------- P10
def p10(work: Path, quick: bool, runs: int) -> list[dict]:
    import toy_threads

    return toy_threads.bench(work / "p10", quick, runs)


# ---------------------------------------------------------------------------------------- report
def machine() -> dict:
    """What the numbers were measured on."""
    mem = next((int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal")), 0)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), platform.processor())
    gpu = shutil.which("nvidia-smi") and subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout.strip()
    import torch

    return {"cores": os.cpu_count(), "memory_gib": round(mem / 2**20, 1), "cpu": cpu, "gpu": gpu or "none",
            "python": platform.python_version(), "torch": torch.__version__, "os": platform.platform(),
            "load_avg_at_start": os.getloadavg()}


def _cell(side: dict | None, unit: str) -> str:
    if not side:
        return "—"
    digits = 1 if side["median"] >= 10 else 3
    fmt = lambda v: f"{v:,.{digits}f}"  # noqa: E731
    return f"{fmt(side['median'])} {unit} ({fmt(side['min'])}–{fmt(side['max'])}, n={len(side['runs'])})"


def table(results: dict) -> str:
    """The markdown table of every row, then each row's note."""
    lines = ["| id | measure | seva | anchor | ratio | target | met |", "|---|---|---|---|---|---|---|"]
    notes = []
    for r in results["rows"]:
        if r.get("error"):
            lines.append(f"| {r['id']} | {r['measure']} | error | | | {r.get('target', '')} | ✗ |")
            notes.append(f"- **{r['id']}** error: `{r['error'].splitlines()[-1][:300]}`")
            continue
        if r.get("skipped"):
            lines.append(f"| {r['id']} | {r['measure']} | skipped ({r['skipped']}) | | | {r['target']} | — |")
            continue
        seva = _cell(r["seva"], r["unit"]) + f"<br>*{r['seva']['label']}*"
        anchor = _cell(r["anchor"], r["unit"]) + (f"<br>*{r['anchor']['label']}*" if r["anchor"] else "")
        ratio = f"{r['ratio']:.3g}×" if r["ratio"] is not None else "—"
        met = {True: "✓", False: "✗", None: "—"}[r["met"]]
        lines.append(f"| {r['id']} | {r['measure']} | {seva} | {anchor} | {ratio} | {r['target']} | {met} |")
        if r.get("note"):
            notes.append(f"- **{r['id']}** {r['measure']}: {r['note']}")
    m = results["machine"]
    head = (f"Measured {results['date']} ({results['mode']} mode, {results['runs']} run(s) per side) on {m['cores']} cores "
            f"({m['cpu']}), {m['memory_gib']} GiB RAM, GPU: {m['gpu']}; torch {m['torch']}, Python {m['python']}. "
            f"Load average at start {', '.join(f'{x:.1f}' for x in m['load_avg_at_start'])} (shared machine).")
    return "\n".join([head, "", *lines, "", *notes])


def write_readme(readme: Path, results: dict) -> None:
    """Replace the text between the result markers (create the file with just the table if absent)."""
    block = f"{START}\n{table(results)}\n{END}"
    text = readme.read_text() if readme.is_file() else f"# seva benchmarks\n\n{START}\n{END}\n"
    if START not in text:
        text += f"\n{START}\n{END}\n"
    pre, rest = text.split(START, 1)
    post = rest.split(END, 1)[1] if END in rest else ""
    readme.write_text(pre + block + post)


BENCHES = {"P1": p1, "P2": p2, "P3": p3, "P4": p4, "P5": p5, "P6": p6, "P7": p7, "P8": p8, "P9": p9, "P10": p10}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny inputs, 1 run, P5 skipped (CI)")
    p.add_argument("--runs", type=int, help="runs per side (default 3, quick 1)")
    p.add_argument("--only", nargs="+", choices=IDS, help="run these ids; keep the others' rows from --results")
    p.add_argument("--results", type=Path, default=BENCH / "results.json")
    p.add_argument("--readme", type=Path, default=BENCH / "README.md")
    p.add_argument("--work", type=Path, default=BENCH / "_work", help="scratch space (generated inputs are cached here)")
    ns = p.parse_args(argv)
    runs = ns.runs or (1 if ns.quick else 3)
    work = ns.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    ids = ns.only or list(IDS)
    old = json.loads(ns.results.read_text()) if ns.only and ns.results.is_file() else {"rows": []}
    rows = [r for r in old["rows"] if r["id"] not in ids]
    results = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "mode": "quick" if ns.quick else "full",
               "runs": runs, "machine": machine(), "rows": rows, "seconds": {}}
    for pid in ids:
        t0 = time.perf_counter()
        print(f"[bench] {pid} …", file=sys.stderr, flush=True)
        try:
            got = BENCHES[pid](work, ns.quick, runs)
        except Exception as e:  # one broken benchmark must not hide the others' numbers
            traceback.print_exc()
            got = [{"id": pid, "measure": "(failed)", "error": f"{type(e).__name__}: {e}", "met": False}]
        results["seconds"][pid] = round(time.perf_counter() - t0, 1)
        for r in got:
            r["measured"] = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
            print(f"[bench] {pid} {r['measure']}: ratio {r.get('ratio')} target {r.get('target')} met {r.get('met')}",
                  file=sys.stderr, flush=True)
        results["rows"] += got
    results["rows"].sort(key=lambda r: r["id"])
    results["machine"]["load_avg_at_end"] = os.getloadavg()
    ns.results.parent.mkdir(parents=True, exist_ok=True)
    ns.results.write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")
    write_readme(ns.readme, results)
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
