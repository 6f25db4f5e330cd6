"""The miniature's gates (`toy.gates`): POPE's scores and each gate's verdict on hand-computed cases."""

from __future__ import annotations

import json

import pytest

from seva_tasks.toy import gates


def _split(accuracy, precision, recall, f1, yes_ratio):
    return dict(accuracy=accuracy, precision=precision, recall=recall, f1=f1, yes_ratio=yes_ratio)


def test_pope_gates_are_the_mean_of_popes_splits_as_fractions():
    # what benchmarks.pope.score reports (percent per split, plus its own means and counts the gates ignore)
    per = {"random": _split(90, 85, 98, 91, 58), "popular": _split(88, 82, 98, 89, 60), "adversarial": _split(86, 79, 98, 87, 62)}
    metrics = {f"{s}/{k}": v for s, m in per.items() for k, v in m.items()} | {"f1": 89.0, "missing": 0, "unmatched": 0}
    assert gates.pope(metrics) == {"accuracy": 0.88, "precision": 0.82, "recall": 0.98, "f1": 0.89, "yes_ratio": 0.6}
    only = {f"random/{k}": v for k, v in per["random"].items()}  # a POPE with one split: that split's numbers
    assert gates.pope(only)["f1"] == 0.91


def test_pope_gates_score_answers_by_popes_rule(tmp_path):
    """End to end on POPE's files: answers read by POPE's rule ("Yes, there is." yes; "not sure" no), F1 per split."""
    from seva_tasks.benchmarks import pope
    from seva_tasks.benchmarks.common import Answer

    labels = ["yes", "yes", "yes", "yes", "no", "no", "no", "no"]
    answers = ["yes", "Yes", "yes.", "There is no circle.", "Yes, there is.", "no", "not sure", "No"]
    (tmp_path / "coco").mkdir()
    (tmp_path / "coco" / "coco_pope_random.json").write_text(
        "".join(json.dumps({"question_id": i + 1, "image": "a.jpg", "text": "q", "label": lab}) + "\n" for i, lab in enumerate(labels)))
    (tmp_path / "llava_pope_test.jsonl").write_text(
        "".join(json.dumps({"question_id": 10_000_001 + i, "image": "a.jpg", "text": "q", "category": "random"}) + "\n"
                for i in range(8)))
    m = gates.pope(pope.score(tmp_path, [Answer(10_000_001 + i, a) for i, a in enumerate(answers)]).metrics)
    # tp 3, fp 1, fn 1, tn 3: precision 0.75, recall 0.75, F1 0.75, accuracy 0.75, yes-ratio 4/8
    assert m == {"accuracy": 0.75, "precision": 0.75, "recall": 0.75, "f1": 0.75, "yes_ratio": 0.5}


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


def test_judge_carries_standard_errors_of_shares():
    values = {"heldout_all": 0.85, "heldout_shape": 0.79, "pope_yes_ratio": 0.70, "pope_f1": 0.95, "noise_drop": 0.2,
              "noise_yes_shift": -0.03}
    g = gates.judge(values, {"heldout_shape": 0.0256})
    assert g["heldout_shape"] == {"value": 0.79, "threshold": ">= 0.8", "passed": False, "se": 0.0256}
    assert "se" not in g["pope_f1"]
    # 3 hits of 4: sqrt(0.75 * 0.25 / 4); paired 1,1,0,0 vs 0,1,0,1: d = 1,0,0,-1, sample sd sqrt(2/3), / sqrt(4)
    assert gates.share_se([True, True, True, False]) == pytest.approx((0.75 * 0.25 / 4) ** 0.5)
    assert gates.paired_se([True, True, False, False], [False, True, False, True]) == pytest.approx((2 / 3) ** 0.5 / 2)


def test_pope_gates_need_a_split():
    with pytest.raises(ValueError, match="without a split"):
        gates.pope({"f1": 80.0})
