"""The miniature's gates: is a toy base model one on which SeVa can be measured at all?

Real LLaVA-1.5 sees (held-out accuracy high), leans mildly to "yes" on POPE (F1 ≈ 86), and loses fine
detail at SeVa's noise step. A toy base model must have the same three properties, or the experiment
measures nothing (issue 13, experiments/miniature/README.md). The pretrain stage measures these on
held-out scenes and writes them to its manifest's `gates`; `experiment.check_gates` refuses a base that
fails one, by name. The issue's five, and `noise_yes_shift`: the third property's direction, which the
first miniature lacked (noise made its answers miss objects, not imagine them).
"""

from __future__ import annotations

from seva_tasks.benchmarks import pope as pope_bench

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


def pope(answers: list[str], labels: list[str]) -> dict[str, float]:
    """POPE's metrics as fractions, the answers read by POPE's own rule (`pope.yes_no`)."""
    if len(answers) != len(labels) or not labels:
        raise ValueError(f"POPE needs one answer per label; got {len(answers)} answers for {len(labels)} labels.")
    m = pope_bench.split_metrics([pope_bench.yes_no(a) for a in answers], labels)
    return {k: round(v / 100, 4) for k, v in m.items()}


def _threshold(lo: float | None, hi: float | None) -> str:
    return f"{lo}..{hi}" if lo is not None and hi is not None else f">= {lo}" if lo is not None else f"<= {hi}"


def judge(values: dict[str, float]) -> dict[str, dict]:
    """{name: {value, threshold, passed}} for every gate (the form `experiment` and `verdict` read)."""
    out = {}
    for name, (lo, hi) in THRESHOLDS.items():
        v = values[name]
        out[name] = {"value": round(v, 4), "threshold": _threshold(lo, hi),
                     "passed": (lo is None or v >= lo) and (hi is None or v <= hi)}
    return out
