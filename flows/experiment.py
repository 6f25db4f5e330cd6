"""The `seva-experiment` flow: one `seva` subflow per (setting, seed), then the table and plots.

    make experiment                                   # configs/experiments/miniature.yaml
    prefect deployment run seva-experiment/toy-seva --watch
    seva experiment configs/experiments/toy-seva.yaml

Every stage is cached by content, so a second invocation (or a setting added later) reruns only
what changed. The table and plots are rewritten after each run, so a long sweep shows its progress,
and published to the UI as the `seva-experiment` markdown artifact, plots embedded as data URIs.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from flows.seva import seva
from seva_tasks import experiment, pipeline, plots
from seva_tasks.config import ROOT, load_config


@flow(name="seva-experiment", persist_result=False, log_prints=True)
def run_experiment(spec: str = "configs/experiments/toy-seva.yaml") -> str:
    """Run every (setting, seed) of the experiment file; return the output directory."""
    exp = experiment.load(spec)
    plan = exp.runs()
    runs = []
    for i, (setting, seed, overrides) in enumerate(plan, 1):
        print(f"[{i}/{len(plan)}] {setting} seed {seed}: {overrides}")
        if exp.require_gates and "pretrain" in pipeline.stages_until(load_config(exp.preset, overrides), None):
            base = seva.with_options(flow_run_name=f"{setting}-seed{seed}-base")(
                config=exp.preset, overrides=overrides, until="pretrain")
            experiment.check_gates(setting, seed, base)  # before SeVa: a base that fails them measures nothing
        refs = seva.with_options(flow_run_name=f"{setting}-seed{seed}")(config=exp.preset, overrides=overrides)
        runs.append(experiment.collect(exp, setting, seed, overrides, refs))
        out = experiment.write(exp, runs)
        create_markdown_artifact(key="seva-experiment", markdown=_report(exp, out, len(runs), len(plan)),
                                 description=f"{spec} -> {out} ({len(runs)}/{len(plan)} runs)")
    print((out / "table.md").read_text())
    if experiment.publish_readme(out, ROOT / "README.md"):
        print(f"README.md: the experiments/{out.name} section now quotes {out / 'table.md'}")
    return str(out)


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
