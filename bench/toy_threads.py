"""P10: the miniature's shared training stages (`vicuna`, `tower`) on two torch threads vs one (bench/run.py).

Both stages run alone in `make experiment` (every seed's base waits on them), so the second core is idle unless the
stage uses it; `threads` is the stage setting that decides. Each side is the stage's own `run()` in this process,
on the same input model and config but `threads`, for a fixed number of steps (held-out checks off); the sides
alternate who goes first, after an untimed 2-step warm-up. Wall time by perf_counter, model load and data building included.
Full: the miniature's world model and preset (`configs/toy-miniature.yaml`), 300 steps each; quick: `make run`'s
toy model, 5 steps (the harness only).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from common import row, summary


def _subject(quick: bool):
    """(the preset config with the shared stages' sections, the input model dir)."""
    from seva_tasks import toy
    from seva_tasks.config import load_config

    cfg = load_config("toy-miniature", {})
    world = toy.ToyConfig() if quick else cfg.toy
    toy.ensure(world)
    return cfg, toy.model_dir(world)


def _run(stage, cfg, model: Path, out: Path) -> float:
    """Wall seconds of one `stage.run` into a fresh `out`."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    t = time.perf_counter()
    stage.run(cfg, {"model": model}, out)
    return time.perf_counter() - t


def bench(work: Path, quick: bool, runs: int) -> list[dict]:
    from seva_tasks.stages import tower, vicuna

    cfg, model = _subject(quick)
    steps = 5 if quick else 300
    # `steps` of the mix alone: the preset's other phases (binding, compose, v1) would make it thousands
    phases = {"bind_steps": 0, "compose_steps": 0, "v1_steps": 0}
    stages = {"vicuna": (vicuna, cfg.vicuna.model_copy(update={"steps": steps, **phases, "heldout": 0})),
              "tower": (tower, cfg.tower.model_copy(update={"steps": steps, "heldout": 8}))}
    rows = []
    for name, (stage, base) in stages.items():
        seconds: dict[int, list[float]] = {1: [], 2: []}
        _run(stage, base.model_copy(update={"steps": 2}), model, work / f"{name}-warm-up")  # imports, first calls: neither side's
        for i in range(runs):
            for threads in ((2, 1) if i % 2 == 0 else (1, 2)):
                seconds[threads].append(_run(stage, base.model_copy(update={"threads": threads}), model, work / f"{name}-{threads}"))
        world = "`make run`'s toy model" if quick else "the miniature's world model"
        rows.append(row("P10", f"`{name}` stage, {steps} steps: 2 torch threads vs 1 (it runs alone on 2 cores)", "s",
                        summary(seconds[2], 2), summary(seconds[1], 2),
                        seva_label=f"{name}.threads: 2 (the miniature preset)", anchor_label=f"{name}.threads: 1 (the default)",
                        target=("ratio<=", 0.75), better="lower",
                        note=f"{world}, the preset's {name} settings but steps; the stage's run() in this process, "
                             "load and data included."))
    return rows
