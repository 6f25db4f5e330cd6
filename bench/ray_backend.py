"""P8: generation through the Ray backend vs the local backend, same toy shards, one box (bench/run.py).

Both sides run `pool.run_workers` on the same request shards with one vLLM engine: the local backend
as one worker process, the Ray backend as a driver that starts a one-node Ray (`ray_address: local`,
inside a loopback-only network namespace, as the tests do) and one engine actor. Timed: the whole
call, engine start included, since that is what a stage pays. The ratio is Ray's overhead on one box
(Ray's own start, the actor's process and runtime env); past one box Ray adds engines, which this
machine (2 shared cores) cannot show.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from common import ROOT, row, summary


def _jobs(work: Path, n: int, shard: int) -> list[dict]:
    """P1's toy requests (half exact-noise), cut into request shards under work/shards/."""
    import pyarrow.parquet as pq

    import generate_throughput as G
    from seva_tasks.engines import pool

    req = work / "p8-requests.parquet"
    G._requests(n, req)
    return pool.write_shards(pq.read_table(req).to_pylist(), work / "shards", shard)


def _timed(engine, jobs: list[dict], work: Path, budget: int) -> float:
    """Seconds for one backend to answer every shard from scratch (earlier results removed)."""
    from seva_tasks.engines import pool

    shutil.rmtree(work / "shards" / "results", ignore_errors=True)
    (work / "shards" / "results").mkdir()
    t = time.perf_counter()
    pool.run_workers(engine, ROOT / "data/toy/model", budget, jobs, embeds=True, work=work / "shards", desc="bench P8")
    return time.perf_counter() - t


def bench(work: Path, quick: bool, runs: int) -> list[dict]:
    """The P8 row: Ray backend vs local backend wall seconds, sides alternating who goes first."""
    from seva_tasks.engines import EngineConfig
    from seva_tasks.engines.ray_cluster import loopback_namespace

    n, shard, budget = (8, 4, 4) if quick else (256, 32, 16)
    work.mkdir(parents=True, exist_ok=True)
    jobs = _jobs(work, n, shard)
    base = {"kind": "vllm", "dtype": "float32", "max_model_len": 512, "kv_cache_memory_bytes": 256 << 20,
            "vllm_args": {"enforce_eager": True} if quick else {}}
    local, ray = EngineConfig(**base), EngineConfig(**base, backend="ray", ray_address="local", ray_actors=1)
    seconds: dict[str, list[float]] = {"local": [], "ray": []}
    for i in range(runs):
        for side in (("local", "ray") if i % 2 == 0 else ("ray", "local")):
            if side == "ray":
                with loopback_namespace():
                    seconds["ray"].append(_timed(ray, jobs, work, budget))
            else:
                seconds["local"].append(_timed(local, jobs, work, budget))
    note = (f"{n} toy prompts (half exact-noise) in {len(jobs)} shards, {budget} new tokens, one vLLM engine per side"
            f"{', eager' if quick else ''}; wall time of the whole call (engine start included). Ray side: a one-node "
            "Ray started by the driver in a loopback-only namespace, one actor. Fastest runs: Ray "
            f"{min(seconds['ray']):.1f} s, local {min(seconds['local']):.1f} s (medians swing with the shared box's load).")
    return [row("P8", f"generate {n} requests: Ray backend (one box) vs local backend", "s", summary(seconds["ray"], 2),
                summary(seconds["local"], 2), seva_label="Ray backend, ray_address=local, 1 actor",
                anchor_label="local backend, 1 worker process", target=("ratio<=", 1.5), better="lower", note=note)]
