"""Worker processes on one machine (or one Ray driver): request shards in, result shards out.

    jobs = write_shards(requests, work, shard_size)
    run_workers(engine_cfg, model, max_new_tokens, jobs, embeds=False, work=work, desc="generate: shards")

A worker is `python -m seva_tasks.engines.vllm_worker SPEC.json` under the engine env's interpreter
(vLLM holds GPU memory until its process ends, and vLLM's torch is not the pipeline's). Shards are the
unit of resume: a shard whose result file matches its requests is never redone. With
`engine.backend: ray` the one process started is `python -m seva_tasks.engines.ray_driver SPEC.json`,
which runs the same shards on engine actors of a Ray cluster; progress and failures are read here the
same way, from the result files (on storage every node sees) and the process's exit code and log.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from seva_tasks.base import resolve
from seva_tasks.engines import EngineConfig, WorkerSpec, vllm_worker  # noqa: F401  (vllm_worker: the code workers run)
from seva_tasks.engines.shards import done, write_requests
from seva_tasks.errors import StageError
from seva_tasks.progress import report


def write_shards(reqs: list[dict], work: Path, size: int) -> list[dict]:
    """Request shards under `work/requests/`; jobs for the worker (result paths under `work/results/`)."""
    (work / "requests").mkdir(parents=True, exist_ok=True)
    (work / "results").mkdir(exist_ok=True)
    jobs = []
    for i, lo in enumerate(range(0, len(reqs), size)):
        name = f"shard-{i:05d}"
        path = work / "requests" / f"{name}.parquet"
        write_requests(reqs[lo : lo + size], path)
        jobs.append({"shard": name, "requests": str(path), "results": str(work / "results" / f"{name}.parquet")})
    return jobs


def finished(jobs: list[dict]) -> int:
    """How many jobs already have a result made from their requests."""
    return sum(1 for j in jobs if done(Path(j["requests"]), Path(j["results"])) is not None)


def interpreter(cfg: EngineConfig) -> Path:
    """The worker's (or Ray driver's) Python: Ray and vLLM live in the engine env."""
    if cfg.python is not None:
        return resolve(cfg.python)
    return resolve(".venv-vllm/bin/python") if cfg.kind == "vllm" or cfg.backend == "ray" else Path(sys.executable)


def _launch(spec: WorkerSpec, jobs: list[dict], embeds: bool, work: Path, n: int, devices: list[str] | None):
    """Start worker `n` on its jobs; returns (Popen, log path)."""
    python = interpreter(spec)
    if not python.is_file():
        raise StageError(f"No engine interpreter at {python} (engine '{spec.kind}'). Create the engine env "
                         f"(`make setup`) or set the stage's engine.python, then rerun.")
    spec_file = work / f"worker-{n}.json"
    spec_file.write_text(json.dumps({"engine": spec.model_dump(mode="json"), "embeds": embeds, "jobs": jobs}, indent=1))
    env = vllm_worker.worker_env(os.environ, spec)
    env["SEVA_PARENT_PID"] = str(os.getpid())  # the worker exits if this process dies (no orphans)
    env["RAY_USAGE_STATS_ENABLED"] = "0"  # Ray would report usage to the internet
    if devices is not None:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(devices)
    log_path = work / f"worker-{n}.log"
    with open(log_path, "ab") as logf:
        module = "seva_tasks.engines.ray_driver" if spec.backend == "ray" else "seva_tasks.engines.vllm_worker"
        proc = subprocess.Popen([str(python), "-m", module, str(spec_file)], stdout=logf,
                                stderr=subprocess.STDOUT, env=env, cwd=str(resolve(".")))
    (work / f"worker-{n}.pid").write_text(f"{proc.pid}\n")
    return proc, log_path


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n    ".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def run_workers(cfg: EngineConfig, model: Path, max_new_tokens: int, jobs: list[dict], *, embeds: bool, work: Path,
                desc: str) -> None:
    """Run the unfinished jobs on one worker per GPU group (or a Ray driver); StageError naming the shard on failure."""
    todo = [j for j in jobs if done(Path(j["requests"]), Path(j["results"])) is None]
    if not todo:
        return
    for j in todo:  # a result made from other requests (older code) is stale
        Path(j["results"]).unlink(missing_ok=True)
    spec = WorkerSpec.model_validate({**cfg.model_dump(), "model": resolve(model), "max_new_tokens": max_new_tokens})
    work.mkdir(parents=True, exist_ok=True)
    tp = cfg.tensor_parallel_size
    groups = [cfg.gpus[i : i + tp] for i in range(0, len(cfg.gpus) - tp + 1, tp)] or [None]  # ray: [None], one driver
    procs = [(_launch(spec, todo[i :: len(groups)], embeds, work, i, g), todo[i :: len(groups)]) for i, g in enumerate(groups)]
    total, before = len(jobs), len(jobs) - len(todo)
    while True:
        running = [p for (p, _), _ in procs if p.poll() is None]
        report(desc, before + sum(1 for j in todo if Path(j["results"]).exists()), total)
        if not running:
            break
        time.sleep(1.0)
    failures = []
    for (proc, log_path), mine in procs:
        left = [j["shard"] for j in mine if done(Path(j["requests"]), Path(j["results"])) is None]
        if proc.returncode != 0 or left:
            rc = proc.returncode
            how = f"was killed by signal {-rc}" if rc < 0 else f"exited with code {rc}"
            if cfg.backend == "ray":  # the failed shard is named in the driver's last log line
                who = f"Ray driver {proc.pid} (engine.ray_address={cfg.ray_address}) {how}"
            else:
                who = f"worker {proc.pid} {how} while on shard {left[0] if left else '?'}"
            failures.append(f"{who} ({len(mine) - len(left)}/{len(mine)} of its shards done); last lines of {log_path}:\n    {_tail(log_path)}")
    if failures:
        raise StageError("Generation failed: " + "\n".join(failures) +
                         "\nFinished shards are kept; fix the cause and rerun the same command to resume.")
