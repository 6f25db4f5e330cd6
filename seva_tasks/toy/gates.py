"""The miniature's gates: is a toy base model one on which SeVa can be measured at all?

Real LLaVA-1.5 sees (held-out accuracy high), leans mildly to "yes" on POPE (F1 ≈ 86), and loses fine
detail at SeVa's noise step. A toy base model must have the same three properties, or the experiment
measures nothing (issue 13, experiments/miniature/README.md). The pretrain stage measures these on
held-out scenes and on the world's clean toy POPE (the benchmark LLaVA's 86 is quoted on) and writes them
to its manifest's `gates`; `experiment.check_gates` refuses a base that fails one, by name. The issue's five,
and `noise_yes_shift`: the third property's direction, which the first miniature lacked (noise made its
answers miss objects, not imagine them).
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from seva_tasks.benchmarks import pope as pope_bench
from seva_tasks.benchmarks.common import Answer, Scored
from seva_tasks.toy.heldout import ask

# name: (lowest, highest) allowed value; None leaves that side open.
THRESHOLDS: dict[str, tuple[float | None, float | None]] = {
    "heldout_all": (0.85, None),
    "heldout_shape": (0.80, None),
    "pope_yes_ratio": (0.55, 0.70),
    "pope_f1": (0.70, 0.88),
    "noise_drop": (0.15, None),  # clean held-out accuracy minus the same questions on noised images
    # Noise pushes answers toward the "yes" prior, as LLaVA hallucinates more on noised images: the noised POPE
    # yes-ratio minus the clean one, on the same questions (0.02: ~1 SE at the stage's 300 questions). A base whose
    # noised answers say "no" more gives SeVa rejected answers that teach the opposite (experiments/miniature, session 9).
    "noise_yes_shift": (0.02, None),
}


def pope(metrics: dict[str, float]) -> dict[str, float]:
    """POPE's scores as the gates read them: each of accuracy, precision, recall, F1 and yes-ratio the mean of its
    splits (as POPE reports F1), as a fraction; from `benchmarks.pope.score`'s metrics (percentages per split)."""
    splits = [s for s in pope_bench.SPLITS if f"{s}/f1" in metrics]
    if not splits:
        raise ValueError(f"POPE metrics without a split's F1: {sorted(metrics)}")
    return {k: round(sum(metrics[f"{s}/{k}"] for s in splits) / len(splits) / 100, 4)
            for k in ("accuracy", "precision", "recall", "f1", "yes_ratio")}


def ask_pope(model, proc, root: Path, noise_step: int = 0, seed: int = 0) -> Scored:
    """The POPE benchmark under `root` answered by `model` (`heldout.ask`; with `noise_step`, on images noised as
    SeVa's rejected side) and scored by POPE's own rule."""
    questions = pope_bench.load(root)
    answers = ask(model, proc, [{"question": q.text, "image": q.image} for q in questions], noise_step=noise_step, seed=seed)
    return pope_bench.score(root, [Answer(q.question_id, a) for q, a in zip(questions, answers)])


def _threshold(lo: float | None, hi: float | None) -> str:
    return f"{lo}..{hi}" if lo is not None and hi is not None else f">= {lo}" if lo is not None else f"<= {hi}"


def judge(values: dict[str, float], se: dict[str, float] | None = None) -> dict[str, dict]:
    """{name: {value, threshold, passed}} for every gate (the form `experiment` and `verdict` read), with `se`
    (the value's standard error) for the gates `se` names. The verdict is on the value: a gate measured too
    coarsely to tell its side of the threshold shows it in its SE, not in a softer bar."""
    out = {}
    for name, (lo, hi) in THRESHOLDS.items():
        v = values[name]
        out[name] = {"value": round(v, 4), "threshold": _threshold(lo, hi),
                     "passed": (lo is None or v >= lo) and (hi is None or v <= hi)}
        if se and name in se:
            out[name]["se"] = round(se[name], 4)
    return out


def share_se(hits: list[bool]) -> float:
    """The standard error of a share of hits (binomial: sqrt(p (1 - p) / n))."""
    p = sum(hits) / len(hits)
    return math.sqrt(p * (1 - p) / len(hits))


def paired_se(first: list[bool], second: list[bool]) -> float:
    """The standard error of the difference of two shares over the same questions (sd of the per-question
    differences / sqrt(n)): the noise drop's, whose clean and noised answers are paired."""
    d = [int(a) - int(b) for a, b in zip(first, second, strict=True)]
    return statistics.stdev(d) / math.sqrt(len(d)) if len(d) > 1 else 0.0
