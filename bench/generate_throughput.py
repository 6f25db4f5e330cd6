"""Generation throughput: vLLM vs HF batch 1 (SeVa's path, the anchor) vs HF batched, same prompts.

    .venv/bin/python bench/generate_throughput.py                       # toy model, 256 prompts, 3 runs
    .venv/bin/python bench/generate_throughput.py --prompts 512 --max-new-tokens 32 --hf-batch 32
    .venv/bin/python bench/generate_throughput.py --model /models/llava-1.5-7b-hf --dtype float16 \\
        --kv-cache-bytes 0                                               # on a GPU box

Each engine runs in its own process under its own interpreter (vLLM: .venv-vllm, HF: this one), loads
once, generates a warm-up batch, then answers the same request list `--runs` times. Half the requests
are SeVa's exact-noise rows (vLLM: embeddings; HF: noised pixel_values), half clean images. Greedy
decoding, so every run produces the same tokens. Reported: load seconds, median seconds per run,
generated tokens/s, and each engine's ratio to HF batch 1. Prints a markdown table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _requests(n: int, path: Path) -> None:
    """n toy prompts over the toy images (cycled), alternating clean and exact-noise (step 500)."""
    from seva_tasks import toy
    from seva_tasks.llava.prompts import conv_prompt
    from seva_tasks.engines.shards import write_requests

    cfg = toy.ToyConfig()
    toy.ensure(cfg)
    images = sorted(str(p) for p in toy.images_dir(cfg).rglob("*.jpg"))
    questions = ["What is the title of this book?", "What is written on the sign?", "How many shapes are there?",
                 "What colour is the largest shape?", "Who wrote this book?", "Describe the image."]
    rows = []
    for i in range(n):
        noisy = i % 2 == 1
        rows.append({"req_id": f"r{i:05d}", "prompt": conv_prompt(questions[(i // 2) % len(questions)], "llava_v1"),
                     "image": images[(i // 2) % len(images)], "noise_step": 500 if noisy else None,
                     "aug_seed": i if noisy else None})
    write_requests(rows, path)


def measure(args: argparse.Namespace) -> dict:
    """In the engine's own interpreter: load, warm up, time `runs` passes over the requests."""
    from seva_tasks.engines import WorkerSpec, make_engine
    from seva_tasks.engines.shards import read_requests

    reqs = read_requests(Path(args.requests))
    cfg = WorkerSpec(kind=args.measure, model=args.model, dtype=args.dtype, max_new_tokens=args.max_new_tokens,
                     max_model_len=args.max_model_len, batch_size=args.batch,
                     kv_cache_memory_bytes=args.kv_cache_bytes or None)
    t0 = time.perf_counter()
    engine = make_engine(cfg, embeds=True)
    load = time.perf_counter() - t0
    engine.generate(reqs[: min(8, len(reqs))])  # warm-up (lazy init, caches)
    runs, tokens = [], None
    for _ in range(args.runs):
        t = time.perf_counter()
        outs = engine.generate(reqs)
        runs.append(time.perf_counter() - t)
        n = sum(len(o.token_ids) for o in outs)
        assert tokens in (None, n), "greedy runs must generate the same tokens"
        tokens = n
    return {"load_s": round(load, 2), "runs_s": [round(r, 3) for r in runs], "gen_tokens": tokens, "requests": len(reqs)}


def _run_engine(name: str, engine: str, batch: int, python: Path, args: argparse.Namespace, req: Path) -> dict:
    from seva_tasks.engines import EngineConfig
    from seva_tasks.engines.vllm_worker import worker_env

    cmd = [str(python), str(Path(__file__).resolve()), "--measure", engine, "--requests", str(req), "--batch", str(batch),
           "--model", args.model, "--dtype", args.dtype, "--max-new-tokens", str(args.max_new_tokens),
           "--max-model-len", str(args.max_model_len), "--runs", str(args.runs), "--kv-cache-bytes", str(args.kv_cache_bytes)]
    env = worker_env(os.environ, EngineConfig(kind=engine))
    print(f"[{name}] running ...", file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"[{name}] failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["median_s"] = statistics.median(res["runs_s"])
    res["tok_per_s"] = round(res["gen_tokens"] / res["median_s"], 1)
    print(f"[{name}] {res}", file=sys.stderr, flush=True)
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(ROOT / "data/toy/model"))
    p.add_argument("--dtype", default="float32")
    p.add_argument("--prompts", type=int, default=256)
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--max-model-len", type=int, default=512)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--hf-batch", type=int, default=16)
    p.add_argument("--kv-cache-bytes", type=int, default=256 << 20, help="vLLM KV cache; 0 = vLLM's GPU default")
    p.add_argument("--vllm-python", default=str(ROOT / ".venv-vllm/bin/python"))
    p.add_argument("--out", default=str(ROOT / "bench/results/generate_throughput.json"))
    p.add_argument("--measure", help=argparse.SUPPRESS)
    p.add_argument("--requests", help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.measure:  # child mode: one engine, JSON on the last stdout line
        res = measure(args)
        print(json.dumps(res), flush=True)
        return
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    req = out.with_suffix(".requests.parquet")
    _requests(args.prompts, req)
    results = {
        "hf_batch1": _run_engine("hf batch 1", "hf", 1, Path(sys.executable), args, req),
        f"hf_batch{args.hf_batch}": _run_engine(f"hf batch {args.hf_batch}", "hf", args.hf_batch, Path(sys.executable), args, req),
        "vllm": _run_engine("vllm", "vllm", 1, Path(args.vllm_python), args, req),
    }
    anchor = results["hf_batch1"]["tok_per_s"]
    lines = [f"{args.prompts} prompts (half exact-noise), {args.max_new_tokens} new tokens max, greedy, {args.dtype}, "
             f"median of {args.runs} runs, model {args.model}", "",
             "| engine | load s | median s/run | gen tokens | tokens/s | vs HF batch 1 |", "|---|---|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['load_s']} | {r['median_s']:.2f} | {r['gen_tokens']} | {r['tok_per_s']} | {r['tok_per_s'] / anchor:.1f}x |")
    print("\n".join(lines))
    out.write_text(json.dumps({"args": {k: v for k, v in vars(args).items() if k not in ("measure", "requests", "batch")},
                               "results": results}, indent=1))
    req.unlink()


if __name__ == "__main__":
    main()
