"""`generate.engine.backend=ray` on a local two-node Ray cluster (one CPU each), inside a network namespace
that holds only loopback (seva_tasks/engines/ray_cluster.py; needs root, as here and in CI).

One cluster serves the module: the local backend's output is the reference. The Ray backend must
write the same bytes when one node's engine actor is killed mid-run and Ray restarts it (default
`ray_retries: 1`), and, with retries off, the stage fails naming the shard and the rerun writes the
same bytes recomputing only the unfinished shards. Every listening socket seen must be loopback.
One request per shard (16 shards of ~0.1 s) leaves a window of a second or more to kill an actor mid-run.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from seva_tasks.engines.ray_cluster import local_cluster, loopback_namespace
from seva_tasks.errors import StageError
from seva_tasks.stages.generate import OUTPUT, WORK, run
from test_generate import MODEL, _cfg, _wait_for_results, augmented  # noqa: F401  (augmented: a fixture)
from test_reliability import _listeners

LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}
DASHBOARD_PORT = 8265
SHARDS = 16  # 8 rows x 2 sides, one request per shard


@pytest.fixture(scope="module")
def cluster():
    """(GCS address, seen) where `seen` collects listening sockets and actor placements every 0.5 s."""
    seen = {"sockets": set(), "actors": {}}  # actors: info file -> every {pid, node} it held
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            seen["sockets"] |= _listeners(os.getpid())
            for f in Path(os.environ["SEVA_RAY_TEST_DIR"]).glob(f"*/{WORK}/ray-actor-*.json"):
                try:
                    info = json.loads(f.read_text())
                except (OSError, ValueError):
                    continue
                if info not in (held := seen["actors"].setdefault(str(f), [])):
                    held.append(info)
            time.sleep(0.5)

    with loopback_namespace(), local_cluster(nodes=2) as (address, _):
        watcher = threading.Thread(target=watch, daemon=True)  # started inside: it sees the namespace's sockets
        watcher.start()
        yield address, seen
        stop.set()
        watcher.join()


@pytest.fixture(scope="module", autouse=True)
def _runs_dir(tmp_path_factory):
    os.environ["SEVA_RAY_TEST_DIR"] = str(tmp_path_factory.mktemp("ray-runs"))
    yield
    os.environ.pop("SEVA_RAY_TEST_DIR")


def _vllm(**kw):
    """The generate config: vLLM in eager mode (its torch.compile warmup is ~15 s of each engine start here)."""
    return _cfg(kind="vllm", vllm_args={"enforce_eager": True}, shard_size=1, **kw)


def _kill_one_actor_after_first_result(out: Path) -> dict:
    """SIGKILL the engine actor of ray-actor-0.json once a first shard is published; its info.

    Two engine starts on two 1-CPU nodes: on a loaded 2-core box (pytest's second worker busy) the first
    shard took over 300 s once, so the wait is generous; it returns as soon as a shard lands."""
    _wait_for_results(out, 1, timeout=1200)
    victim = json.loads((out / WORK / "ray-actor-0.json").read_text())
    os.kill(victim["pid"], signal.SIGKILL)
    return victim


def _out(name: str) -> Path:
    return Path(os.environ["SEVA_RAY_TEST_DIR"]) / name


@pytest.fixture(scope="module")
def local_vllm(augmented) -> Path:  # noqa: F811
    out = _out("local")
    run(_vllm(), {"augment": augmented, "model": MODEL}, out)
    return out / OUTPUT


def test_ray_backend_writes_the_local_backends_bytes_through_an_actor_restart(cluster, augmented, local_vllm):  # noqa: F811
    address, seen = cluster
    out = _out("ray")
    result: list[dict] = []
    t = threading.Thread(target=lambda: result.append(
        run(_vllm(backend="ray", ray_address=address), {"augment": augmented, "model": MODEL}, out)))
    t.start()
    victim = _kill_one_actor_after_first_result(out)
    t.join(timeout=300)
    assert result and result[0]["shards_run"] == SHARDS and (out / OUTPUT).read_bytes() == local_vllm.read_bytes()
    held = {f: infos for f, infos in seen["actors"].items() if f.startswith(str(out))}
    assert len({infos[0]["node"] for infos in held.values()}) == 2, held  # one engine actor on each node
    restarted = held[str(out / WORK / "ray-actor-0.json")]
    assert restarted[0]["pid"] == victim["pid"] and len({i["pid"] for i in restarted}) == 2, restarted  # Ray restarted it


def test_actor_killed_mid_run_then_rerun_redoes_only_unfinished_shards(cluster, augmented, local_vllm):  # noqa: F811
    address, seen = cluster
    out = _out("killed")
    cfg = _vllm(backend="ray", ray_address=address, ray_retries=0)
    errors: list[BaseException] = []
    t = threading.Thread(target=lambda: errors.append(pytest.raises(StageError, run, cfg, {"augment": augmented, "model": MODEL}, out).value))
    t.start()
    _kill_one_actor_after_first_result(out)
    t.join(timeout=300)
    msg = str(errors[0])
    assert f"engine.ray_address={address}" in msg and "Ray backend failed: shard shard-" in msg and "rerun" in msg, msg
    from seva_tasks.engines.shards import done

    finished = {p.stem: done(out / WORK / "requests" / p.name, p) for p in (out / WORK / "results").glob("shard-*.parquet")}
    assert 1 <= len(finished) < SHARDS and None not in finished.values()  # every result file whole and current
    stats = run(cfg, {"augment": augmented, "model": MODEL}, out)
    assert stats["shards_reused"] == len(finished) and stats["shards_run"] == SHARDS - len(finished)
    # The reused shards' stats (seconds included) come from their untouched files.
    assert all({k: v for k, v in s.items() if k != "shard"} == finished[s["shard"]] for s in stats["shards"] if s["shard"] in finished)
    assert (out / OUTPUT).read_bytes() == local_vllm.read_bytes()


def test_unreachable_cluster_is_a_stage_error_naming_the_address(augmented, tmp_path):  # noqa: F811
    with pytest.raises(StageError, match=r"(?s)ray_address=127\.0\.0\.1:9\b.*Cannot reach the Ray cluster at engine.ray_address='127.0.0.1:9'"):
        run(_vllm(backend="ray", ray_address="127.0.0.1:9"), {"augment": augmented, "model": MODEL}, tmp_path)


def test_every_listening_socket_of_the_ray_runs_is_loopback_and_no_dashboard(cluster):
    _, seen = cluster
    assert {name for *_, name in seen["sockets"]} >= {"gcs_server", "raylet"}, seen["sockets"]
    exposed = sorted(s for s in seen["sockets"] if s[0] not in LOOPBACK)
    assert not exposed, f"listening beyond loopback: {exposed}"
    assert not [s for s in seen["sockets"] if s[1] == DASHBOARD_PORT], "Ray's dashboard is on"


def test_engine_gpus_with_the_ray_backend_is_a_config_error():
    from pydantic import ValidationError

    from seva_tasks.engines import EngineConfig

    with pytest.raises(ValidationError, match=r"engine.gpus=\['0', '1'\] with engine.backend=ray"):
        EngineConfig(backend="ray", gpus=["0", "1"])
