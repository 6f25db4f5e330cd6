"""The experiment's plan, statistics, table and outputs, on hand-computed runs (the runs themselves are
cached `seva` flows, covered by test_e2e)."""

from __future__ import annotations

import json

import pytest

from seva_tasks import experiment
from seva_tasks.errors import ConfigError


def _run(setting: str, seed: int, pairs: int, pope: tuple[float, float], gqa: tuple[float, float]) -> dict:
    quality = {"pairs": pairs, "with_reference": pairs, "chosen_right": 2, "rejected_right": 1, "chosen_only": 1 + seed,
               "rejected_only": 0}
    return {"setting": setting, "seed": seed, "overrides": {}, "pairs": pairs, "pair_quality": quality, "keys": {},
            "benchmarks": {"pope": {"metric": "f1", "base": pope[0], "aligned": pope[1]},
                           "gqa": {"metric": "accuracy", "base": gqa[0], "aligned": gqa[1]}}}


RUNS = [_run("paper", 0, 7, (60.0, 62.0), (40.0, 40.0)),
        _run("paper", 1, 9, (60.0, 66.0), (40.0, 38.0)),
        _run("paper", 2, 8, (60.0, 61.0), (40.0, 42.0)),
        _run("noise-800", 0, 30, (60.0, 50.0), (40.0, 44.0))]


def _exp(tmp_path) -> experiment.ExperimentConfig:
    return experiment.ExperimentConfig(out=tmp_path / "out", settings=[
        {"name": "paper"}, {"name": "noise-800", "overrides": {"augment.noise_step": 800}, "seeds": [0]}])


def test_plan_sets_every_seed_key_and_checks_overrides_up_front(tmp_path):
    plan = _exp(tmp_path).runs()
    assert [(s, seed) for s, seed, _ in plan] == [("paper", 0), ("paper", 1), ("paper", 2), ("noise-800", 0)]
    assert plan[1][2] == {"sample.seed": 1, "augment.seed": 1, "train.seed": 1}
    assert plan[3][2]["augment.noise_step"] == 800
    bad = experiment.ExperimentConfig(settings=[{"name": "x", "overrides": {"train.betta": 0.2}}])
    with pytest.raises(ConfigError, match="betta"):
        bad.runs()


def test_summary_is_mean_and_sample_std_of_paired_deltas():
    s = experiment.summarize(RUNS)
    pope = s["paper"]["benchmarks"]["pope"]
    assert pope["base"] == {"mean": 60.0, "std": 0.0, "n": 3}
    assert pope["aligned"]["mean"] == pytest.approx(63.0)
    # deltas 2, 6, 1: mean 3, sample variance ((1 + 9 + 4) / 2) = 7
    assert pope["delta"]["mean"] == pytest.approx(3.0)
    assert pope["delta"]["std"] == pytest.approx(7 ** 0.5)
    assert s["paper"]["benchmarks"]["gqa"]["delta"] == {"mean": 0.0, "std": 2.0, "n": 3}
    assert s["paper"]["pairs"]["mean"] == 8.0 and s["paper"]["seeds"] == [0, 1, 2]
    assert s["noise-800"]["benchmarks"]["pope"]["delta"] == {"mean": -10.0, "std": None, "n": 1}
    assert s["paper"]["pair_quality"]["chosen_only"]["mean"] == 2.0  # 1, 2, 3


def test_outputs_table_and_plots(tmp_path):
    exp = _exp(tmp_path)
    out = experiment.write(exp, RUNS)
    table = (out / "table.md").read_text()
    assert "| POPE | f1 | 60.00 ± 0.00 | 63.00 ± 2.65 | +3.00 ± 2.65 |" in table
    assert "| noise-800 | 1 | 30.00 | -10.00 | +4.00 |" in table
    assert "- **noise-800**: no description (`augment.noise_step=800`)" in table
    assert "| paper | 8.0 | 2.0 | 1.0 | 2.0 | 0.0 |" in table
    assert [json.loads(line)["seed"] for line in (out / "runs.jsonl").read_text().splitlines()] == [0, 1, 2, 0]
    for png in ("seeds.png", "sweep.png"):
        assert (out / "plots" / png).read_bytes()[:4] == b"\x89PNG"
    # Rewritten as a whole: a second write replaces, never mixes.
    out = experiment.write(exp, RUNS[:1])
    assert len((out / "runs.jsonl").read_text().splitlines()) == 1
    assert not list(tmp_path.glob(".out.*"))


def test_missing_experiment_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml"):
        experiment.load(tmp_path / "nope.yaml")


def test_unreadable_experiment_file_is_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("settings:\n  - name: x\n    why: a: b\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        experiment.load(bad)


def test_pair_quality_checks_chosen_and_rejected_against_the_mix(tmp_path):
    import polars as pl

    mix = [{"id": "b1", "image": "ocr_vqa/images/b1.jpg", "conversations": [
                {"from": "human", "value": "<image>\nIs this a cookbook?"}, {"from": "gpt", "value": "No"},
                {"from": "human", "value": "Who wrote it?"}, {"from": "gpt", "value": "Ann Lee"}]},
           {"id": "t1", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]},
           {"id": "b2", "image": "ocr_vqa/images/b2.jpg", "conversations": [
                {"from": "human", "value": "<image>\nWhat is the title?"}, {"from": "gpt", "value": "Red Sky."}]}]
    (tmp_path / "mix.json").write_text(json.dumps(mix))
    turn = lambda text: [{"role": "assistant", "content": text}]
    pl.DataFrame({"id": ["b1:0", "b1:1", "b2:0", "zz:0"],
                  "chosen": [turn("No, it is not."), turn("Ann Lee"), turn("Red"), turn("x")],
                  "rejected": [turn("Nothing"), turn("ann lee!"), turn("red sky"), turn("y")]}).write_parquet(
        tmp_path / "pairs.parquet")
    q = experiment.pair_quality(tmp_path / "pairs.parquet", tmp_path / "mix.json")
    # b1:0 chosen right ("No" as a whole word), rejected wrong ("Nothing"); b1:1 both right;
    # b2:0 only rejected right (a prefix of the title is not the title); zz:0 has no reference.
    assert q == {"pairs": 4, "with_reference": 3, "chosen_right": 2, "rejected_right": 2, "chosen_only": 1,
                 "rejected_only": 1}
