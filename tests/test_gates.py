"""The miniature's gates (`toy.gates`): POPE's counts and each gate's verdict on hand-computed cases."""

from __future__ import annotations

import pytest

from seva_tasks.toy import gates


def test_pope_counts_yes_as_positive_and_reads_answers_by_popes_rule():
    # 4 present, 4 absent. Answers: 3 of the present said yes, 1 absent said yes ("Yes, there is."),
    # one present answered "There is no circle." (no), one absent "not sure" (no by POPE's rule).
    labels = ["yes", "yes", "yes", "yes", "no", "no", "no", "no"]
    answers = ["yes", "Yes", "yes.", "There is no circle.", "Yes, there is.", "no", "not sure", "No"]
    m = gates.pope(answers, labels)
    # tp 3, fp 1, fn 1, tn 3: precision 0.75, recall 0.75, F1 0.75, accuracy 0.75, yes-ratio 4/8
    assert m == {"accuracy": 0.75, "precision": 0.75, "recall": 0.75, "f1": 0.75, "yes_ratio": 0.5}


def test_always_yes_on_balanced_pope_gives_f1_two_thirds():
    m = gates.pope(["yes"] * 10, ["yes"] * 5 + ["no"] * 5)
    assert m["f1"] == pytest.approx(0.6667, abs=1e-4) and m["yes_ratio"] == 1.0 and m["recall"] == 1.0


def test_judge_checks_each_bound_and_names_the_threshold():
    values = {"heldout_all": 0.85, "heldout_shape": 0.79, "pope_yes_ratio": 0.70, "pope_f1": 0.95, "noise_drop": 0.2,
              "noise_yes_shift": -0.03}
    g = gates.judge(values)
    assert {k: v["passed"] for k, v in g.items()} == {
        "heldout_all": True, "heldout_shape": False, "pope_yes_ratio": True, "pope_f1": False, "noise_drop": True,
        "noise_yes_shift": False}  # noise made the answers say "no" more: the wrong direction for SeVa
    assert g["pope_f1"] == {"value": 0.95, "threshold": "0.7..0.88", "passed": False}
    assert g["heldout_shape"]["threshold"] == ">= 0.8"
    assert gates.judge({**values, "pope_yes_ratio": 0.5})["pope_yes_ratio"]["passed"] is False  # below the band


def test_pope_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="one answer per label"):
        gates.pope(["yes"], ["yes", "no"])
