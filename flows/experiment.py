"""The `seva-experiment` flow: one `seva` subflow per (setting, seed), then the table and plots.

    make experiment                                   # configs/experiments/miniature.yaml
    prefect deployment run seva-experiment/toy-seva --watch
    seva experiment configs/experiments/toy-seva.yaml

Every stage is cached by content, so a second invocation (or a setting added later) reruns only
what changed. The table and plots are rewritten after each run, so a long sweep shows its progress,
and published to the UI as the `seva-experiment` markdown artifact, plots embedded as data URIs.
With `workers: N` in the experiment file, N runs go at once, each in its own process (Prefect's
ProcessPoolTaskRunner); a stage two runs share (a seed's base model) is built once, under the store's lock.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from prefect import flow, get_client, task
from prefect.artifacts import create_markdown_artifact
from prefect.futures import as_completed
from prefect.task_runners import ProcessPoolTaskRunner

from flows.seva import seva
from seva_tasks import experiment, pipeline, plots, readme
from seva_tasks.config import ROOT, load_config


@flow(name="seva-experiment", persist_result=False, log_prints=True)
def run_experiment(spec: str = "configs/experiments/toy-seva.yaml") -> str:
    """Run every (setting, seed) of the experiment file; return the output directory."""
    exp = experiment.load(spec)
    plan = exp.runs()
    done: dict[int, dict] = {}
    for i, line in _finished(spec, exp, plan):
        done[i] = line
        out = experiment.write(exp, [done[k] for k in sorted(done)])  # plan order, whatever finished first
        create_markdown_artifact(key="seva-experiment", markdown=_report(exp, out, len(done), len(plan)),
                                 description=f"{spec} -> {out} ({len(done)}/{len(plan)} runs)")
    print((out / "table.md").read_text())
    if readme.publish(out, ROOT / "README.md"):
        print(f"README.md: the experiments/{out.name} section now quotes {out / 'table.md'}")
    return str(out)


def _run(spec: str, setting: str, seed: int, overrides: dict[str, Any]) -> dict:
    """One (setting, seed): its `seva` subflow, and its line of runs.jsonl."""
    exp = experiment.load(spec)
    experiment.share_cores(exp.workers)
    if exp.require_gates and "pretrain" in pipeline.stages_until(load_config(exp.preset, overrides), None):
        base = seva.with_options(flow_run_name=f"{setting}-seed{seed}-base")(
            config=exp.preset, overrides=overrides, until="pretrain")
        experiment.check_gates(setting, seed, base)  # before SeVa: a base that fails them measures nothing
    refs = seva.with_options(flow_run_name=f"{setting}-seed{seed}")(config=exp.preset, overrides=overrides)
    return experiment.collect(exp, setting, seed, overrides, refs)


run_in_worker = task(_run, task_run_name="{setting}-seed{seed}", persist_result=False)


def _finished(spec: str, exp: experiment.ExperimentConfig, plan: list[tuple[str, int, dict]]):
    """(plan index, runs.jsonl line) per run as it finishes: in this process one by one, or `exp.workers` at once."""
    if exp.workers == 1:
        for i, (setting, seed, overrides) in enumerate(plan):
            print(f"[{i + 1}/{len(plan)}] {setting} seed {seed}: {overrides}")
            yield i, _run(spec, setting, seed, overrides)
        return
    # Workers are new processes: they must report to this flow's server, a temporary one included.
    with get_client(sync_client=True) as client:
        os.environ.setdefault("PREFECT_API_URL", str(client.api_url).rstrip("/"))
    print(f"{len(plan)} runs, {exp.workers} at a time")
    # The headline's runs first (they build each seed's base), then the rest seed by seed, and never more queued
    # than there are workers (the runner starts what it is given in no set order): a worker then rarely waits on
    # the store's lock for a base model that another worker is still training.
    queue = sorted(range(len(plan)), key=lambda i: (plan[i][0] != exp.settings[0].name, plan[i][1], i))
    running: dict = {}
    with ProcessPoolTaskRunner(max_workers=exp.workers) as runner:
        while queue or running:
            while queue and len(running) < exp.workers:
                i = queue.pop(0)
                print(f"[{i + 1}/{len(plan)}] {plan[i][0]} seed {plan[i][1]}: started")
                running[runner.submit(run_in_worker, parameters={"spec": spec, "setting": plan[i][0],
                                                                 "seed": plan[i][1], "overrides": plan[i][2]})] = i
            future = next(iter(as_completed(list(running))))
            i = running.pop(future)
            print(f"[{i + 1}/{len(plan)}] {plan[i][0]} seed {plan[i][1]}: done")
            yield i, future.result()


def _report(exp: experiment.ExperimentConfig, out: Path, done: int, total: int) -> str:
    """table.md and the two plots, embedded (the UI cannot resolve plots/*.png)."""
    md = [f"# Experiment `{out.name}`: {done}/{total} runs", "", (out / "table.md").read_text(), "",
          f"![{exp.settings[0].name}: base vs aligned over seeds](plots/seeds.png)", "",
          "![Δ aligned − base per setting](plots/sweep.png)", "", f"Files: `{out}`"]
    return plots.embed("\n".join(md), out)


if __name__ == "__main__":
    # = `seva experiment`, in a fresh interpreter: Prefect reads its settings once, at import (done
    # above), and seva_tasks/serve.py must set them up first.
    import os
    import sys

    os.execv(sys.executable, [sys.executable, "-m", "seva_tasks.cli", "experiment", *sys.argv[1:]])
