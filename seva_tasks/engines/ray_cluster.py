"""A throwaway Ray cluster of N one-CPU nodes on this machine, for the tests and `bench/` (not for users:
they run `ray start`, README "Generation on a Ray cluster").

    with loopback_namespace(), local_cluster(nodes=2) as (address, holder):
        ... generate.engine.backend=ray generate.engine.ray_address=<address> ...

Ray binds its GCS and raylets to the host's interface address even when told 127.0.0.1 (DESIGN §7),
so `loopback_namespace()` first moves this thread into a new network namespace holding only `lo`
(needs root, as in CI); every process started inside inherits it, and the thread goes back on exit.
The cluster lives in a holder process under the engine env (`python -m seva_tasks.engines.ray_cluster
N`: ray.cluster_utils.Cluster, no dashboard) that prints its address and stops when stdin closes.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

from seva_tasks.base import resolve
from seva_tasks.errors import StageError

CLONE_NEWNET = 0x40000000


@contextlib.contextmanager
def loopback_namespace():
    """Run the body (and every process it starts) in a fresh network namespace with only loopback up."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    home = os.open(f"/proc/self/task/{threading.get_native_id()}/ns/net", os.O_RDONLY)  # namespaces are per thread
    try:
        if libc.unshare(CLONE_NEWNET) != 0:
            raise StageError(f"unshare(CLONE_NEWNET) failed: {os.strerror(ctypes.get_errno())}. A loopback-only "
                             "Ray cluster needs root (CAP_SYS_ADMIN), as the tests and CI run.")
        try:
            subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
            yield
        finally:
            if libc.setns(home, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back to the original network namespace failed")
    finally:
        os.close(home)


@contextlib.contextmanager
def local_cluster(nodes: int = 2, python: Path | None = None, timeout: float = 120):
    """Start the holder; yield (GCS address, holder Popen); stop the cluster on exit."""
    python = python or resolve(".venv-vllm/bin/python")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    holder = subprocess.Popen([str(python), "-m", "seva_tasks.engines.ray_cluster", str(nodes)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=env)
    try:
        line = _readline(holder, timeout)
        if not line:
            raise StageError(f"The local Ray cluster did not start (holder exited {holder.wait()}); see its stderr above.")
        yield json.loads(line)["address"], holder
    finally:
        holder.stdin.close()
        try:
            holder.wait(timeout=60)
        except subprocess.TimeoutExpired:
            holder.kill()
            holder.wait()


def _readline(proc: subprocess.Popen, timeout: float) -> str:
    """The holder's first stdout line, or StageError after `timeout` seconds (the holder is killed)."""
    import selectors

    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            proc.kill()
            raise StageError(f"The local Ray cluster did not print its address within {timeout:.0f} s.")
    return proc.stdout.readline()


def main(argv: list[str] | None = None) -> int:
    """Engine env: start the cluster, print {"address", "nodes"}, hold it until stdin closes."""
    from ray.cluster_utils import Cluster

    nodes = int((sys.argv[1:] if argv is None else argv or ["2"])[0])
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    for _ in range(nodes - 1):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    print(json.dumps({"address": cluster.address, "nodes": nodes}), flush=True)
    sys.stdin.read()
    cluster.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
