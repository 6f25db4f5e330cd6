"""Backend `ray`: the request shards as work for engine actors on a Ray cluster.

    .venv-vllm/bin/python -m seva_tasks.engines.ray_driver SPEC.json

SPEC.json is the local worker's (engines/vllm_worker.py): {"engine": WorkerSpec, "embeds", "jobs"}; the
engine's `ray_address`, `ray_actors`, `ray_retries` say where and how. `pool.run_workers` starts this
driver under the engine env's interpreter (Ray and vLLM live there, DESIGN §7) and, as for local
workers, counts finished result files for progress and names what failed.

Each actor loads one engine (vLLM, `num_gpus = tensor_parallel_size` on a GPU cluster, one CPU each,
spread over the nodes) and runs `shards.run_shard` on the jobs the driver hands it one at a time, so
a fast node takes more shards. Actors write result shards themselves, atomically, straight into the
stage's partial dir: the store must be on a filesystem every node sees at the same path (README,
"Generation on a Ray cluster"); nothing is shipped back through the driver. A result made from a
job's exact requests is never redone, whichever node wrote it. An actor that dies mid-shard is
restarted and its shard retried `ray_retries` times; after that the driver exits nonzero naming the
shard, and a rerun redoes only the unfinished shards.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from pathlib import Path

from seva_tasks.engines import WorkerSpec, make_engine
from seva_tasks.engines.shards import done, run_shard
from seva_tasks.engines.vllm_worker import start, worker_env
from seva_tasks.store import write_json_atomic

UNREACHABLE = 3  # exit code: the cluster could not be reached (pool names the address from the log)
log = logging.getLogger("seva_tasks.engines.ray_driver")


class ShardActor:
    """One engine on one node, answering shards: what a local worker process does, as a Ray actor."""

    def __init__(self, spec: dict, embeds: bool, info_path: str):
        import ray

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.cfg = WorkerSpec.model_validate(spec)
        # Written before the engine loads: where to look (or what to kill) for this actor.
        write_json_atomic(Path(info_path), {"pid": os.getpid(), "node": ray.get_runtime_context().get_node_id(),
                                            "host": socket.gethostname()})
        self.engine = make_engine(self.cfg, embeds=embeds)

    def run(self, job: dict) -> dict:
        if (stats := done(Path(job["requests"]), Path(job["results"]))) is not None:
            return stats  # published by an earlier try of this task (its actor died after the rename)
        return run_shard(Path(job["requests"]), Path(job["results"]), self.cfg, self.engine)


def _check_reachable(address: str) -> None:
    """Fail fast, naming the address, when nothing listens there (ray.init would retry for a minute)."""
    if address in ("auto", "local"):
        return
    rest = address.removeprefix("ray://")
    host, _, port = rest.rpartition(":") if ":" in rest else (rest, "", "")
    default = 10001 if address.startswith("ray://") else 6379  # Ray Client's port / the GCS's
    try:
        socket.create_connection((host, int(port or default)), timeout=10).close()
    except (OSError, ValueError) as e:
        raise ConnectionError(f"nothing answers at {address} ({e})") from e


def _connect(spec: WorkerSpec, code_root: Path) -> None:
    """ray.init on the configured cluster; actors get the worker env (offline, in-process vLLM, shim)."""
    import ray

    env = worker_env({"PYTHONPATH": str(code_root), "RAY_USAGE_STATS_ENABLED": "0"}, spec)
    if "SEVA_ROOT" in os.environ:
        env["SEVA_ROOT"] = os.environ["SEVA_ROOT"]
    kwargs = {"runtime_env": {"env_vars": env}, "logging_level": logging.WARNING}
    if spec.ray_address == "local":  # a one-node Ray for this run only; no dashboard
        kwargs.update(address="local", include_dashboard=False, num_cpus=spec.ray_actors or 1)
    else:
        kwargs["address"] = spec.ray_address
    _check_reachable(spec.ray_address)
    ray.init(**kwargs)


def _actors(spec: WorkerSpec, embeds: bool, work: Path, n_jobs: int) -> list:
    """The engine actors: `ray_actors`, else one per tensor-parallel GPU group, or per node on CPUs."""
    import ray

    gpus = int(ray.cluster_resources().get("GPU", 0))
    tp = spec.tensor_parallel_size
    if gpus and gpus < tp:
        raise RuntimeError(f"the cluster has {gpus} GPU(s), fewer than engine.tensor_parallel_size={tp}")
    n = spec.ray_actors or (gpus // tp if gpus else sum(1 for node in ray.nodes() if node["Alive"]))
    n = max(1, min(n, n_jobs))
    # A tensor-parallel group stays inside its actor: with no placement group vLLM picks its multiprocessing
    # executor on the actor's GPUs (Ray sets CUDA_VISIBLE_DEVICES to them).
    actor = ray.remote(ShardActor).options(
        num_cpus=1, num_gpus=tp if gpus else 0, max_restarts=spec.ray_retries, max_task_retries=spec.ray_retries,
        scheduling_strategy="SPREAD")
    log.info("Starting %d engine actor(s) (%s per actor) for %d shards.", n, f"{tp} GPU" if gpus else "1 CPU", n_jobs)
    body = spec.model_dump(mode="json")
    return [actor.remote(body, embeds, str(work / f"ray-actor-{i}.json")) for i in range(n)]


def run(spec: WorkerSpec, jobs: list[dict], embeds: bool, work: Path) -> None:
    """Hand every unfinished job to a free actor until all are done; RuntimeError naming a failed shard."""
    import ray

    todo = [j for j in jobs if done(Path(j["requests"]), Path(j["results"])) is None]
    log.info("%d of %d shards to generate on the Ray cluster (%d already done)", len(todo), len(jobs), len(jobs) - len(todo))
    if not todo:
        return
    free, pending = _actors(spec, embeds, work, len(todo)), {}
    while todo or pending:
        while free and todo:
            actor, job = free.pop(), todo.pop(0)
            pending[actor.run.remote(job)] = (actor, job)
        [ref], _ = ray.wait(list(pending), num_returns=1)
        actor, job = pending.pop(ref)
        try:
            s = ray.get(ref)
        except ray.exceptions.RayError as e:
            raise RuntimeError(f"shard {job['shard']} failed after {spec.ray_retries} retries: {type(e).__name__}: "
                               f"{str(e).splitlines()[0] if str(e) else ''}") from e
        log.info("Shard %s: %d rows, %d dropped, %d tokens in %.1f s → %s", job["shard"], s["rows"], s["dropped"],
                 s["gen_tokens"], s["seconds"], job["results"])
        free.append(actor)


def main(argv: list[str] | None = None) -> int:
    """Connect, run the spec's shards on the cluster; exit 0 only when every shard has a published result."""
    if (started := start(argv, "seva_tasks.engines.ray_driver")) is None:
        return 2
    spec_path, spec, cfg = started
    import ray

    try:
        _connect(cfg, Path(__file__).resolve().parents[2])
    except (ConnectionError, RuntimeError, ValueError) as e:
        print(f"Cannot reach the Ray cluster at engine.ray_address={cfg.ray_address!r}: {e}. Start it (`ray start "
              "--head` on the head node) or set engine.ray_address (README: Generation on a Ray cluster).",
              file=sys.stderr, flush=True)
        return UNREACHABLE
    try:
        run(cfg, spec["jobs"], spec.get("embeds", False), spec_path.parent)
    except RuntimeError as e:
        ray.shutdown()  # before the message, so the log's last line is the reason
        print(f"Ray backend failed: {e}", file=sys.stderr, flush=True)
        return 1
    ray.shutdown()
    return 0


if __name__ == "__main__":  # run the importable module's main: Ray ships ShardActor by reference, not from __main__
    from seva_tasks.engines.ray_driver import main as _main

    sys.exit(_main())
