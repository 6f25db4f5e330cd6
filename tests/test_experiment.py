"""The experiment's plan, statistics, table and outputs, on hand-computed runs (the runs themselves are
cached `seva` flows, covered by test_e2e)."""

from __future__ import annotations

import json

import pytest

from seva_tasks import experiment, verdict
from seva_tasks import readme as readme_section
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


def test_every_experiment_file_plans_and_the_miniature_gives_each_seed_its_own_base():
    from seva_tasks.base import resolve
    from seva_tasks.config import load_config

    files = sorted(resolve("configs/experiments").glob("*.yaml"))
    assert len(files) >= 3, files
    for path in files:
        assert experiment.load(path).runs()  # every override checked against the schema
    exp = experiment.load("configs/experiments/miniature.yaml")
    plan = exp.runs()
    assert {o["pretrain.seed"] for _, _, o in plan} == {0, 1, 2}
    assert [s.name for s in exp.settings if s.control] == ["swapped", "shuffled", "sft-chosen", "blank-image"]
    cfg = load_config(exp.preset)
    # its own world: building it must not replace make run's data/toy
    assert cfg.toy.root != load_config("toy").toy.root
    assert cfg.pretrain.noise_step == cfg.augment.noise_step and cfg.vicuna is not None
    for path in (cfg.model, cfg.pretrain.annotations, cfg.sample.annotations, cfg.evaluate.data_root):
        assert str(path).startswith(str(cfg.toy.root)), path


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
    assert "### POPE per split" not in table  # these runs carry no per-split POPE
    split = {"adversarial/precision": 80.0, "adversarial/recall": 90.0, "adversarial/f1": 84.0,
             "adversarial/yes_ratio": 60.0}
    runs = [{**r, "pope_splits": {"base": split, "aligned": {**split, "adversarial/yes_ratio": 50.0 + 3 * r["seed"]}}}
            for r in RUNS[:3]]
    table = (experiment.write(exp, runs) / "table.md").read_text()
    # yes-ratio 50, 53, 56 after SeVa: mean 53
    assert "| adversarial | 80.00 → 80.00 | 90.00 → 90.00 | 84.00 → 84.00 | 60.00 → 53.00 |" in table
    assert "### Verdict (`verdict.json`, setting `paper`)" in table
    audit = {"yes/no": dict(zip(experiment.COUNTS, (5, 5, 3, 1, 3, 1)))}
    table = (experiment.write(exp, [{**r, "pair_audit": audit} for r in RUNS[:3]]) / "table.md").read_text()
    assert "| yes/no | 15 | 9 | 3 | 9 | 3 |" in table  # summed over the three seeds


def test_outputs_before_any_headline_run_has_finished(tmp_path):
    """With workers, a control can finish first: the outputs say so instead of failing the experiment."""
    out = experiment.write(_exp(tmp_path), RUNS[3:])
    assert (out / "table.md").read_text() == "### paper: no run finished yet\n"
    assert [json.loads(x)["setting"] for x in (out / "runs.jsonl").read_text().splitlines()] == ["noise-800"]
    assert (out / "plots" / "sweep.png").is_file() and not (out / "plots" / "seeds.png").exists()


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
    audit = experiment.pair_audit(tmp_path / "pairs.parquet", tmp_path / "mix.json")
    # b1:0 chosen right ("No" as a whole word), rejected wrong ("Nothing"); b1:1 both right;
    # b2:0 only rejected right (a prefix of the title is not the title); zz:0 has no reference.
    assert experiment.pair_quality(audit) == {"pairs": 4, "with_reference": 3, "chosen_right": 2, "rejected_right": 2,
                                              "chosen_only": 1, "rejected_only": 1}
    # b1:0's reference is "No": a yes/no question; the rest by subset ("all": this parquet has no subset column)
    assert audit["yes/no"] == {"pairs": 1, "with_reference": 1, "chosen_right": 1, "rejected_right": 0,
                               "chosen_only": 1, "rejected_only": 0}
    assert audit["all"]["pairs"] == 3 and audit["all"]["rejected_only"] == 1


def test_mcnemar_and_auroc_on_hand_computed_cases():
    from seva_tasks.benchmarks import pope

    assert verdict.mcnemar_p(0, 0) == 1.0 and verdict.mcnemar_p(5, 5) == 1.0
    assert verdict.mcnemar_p(2, 12) == pytest.approx(2 * (1 + 14 + 91) / 2 ** 14)  # 0.0129
    assert verdict.mcnemar_p(12, 2) == verdict.mcnemar_p(2, 12)
    assert pope.auroc([0.9, 0.8, 0.3, 0.2], [True, True, False, False]) == 1.0
    assert pope.auroc([0.9, 0.8, 0.3, 0.2], [False, False, True, True]) == 0.0
    assert pope.auroc([0.7, 0.5, 0.5, 0.1], [True, True, False, False]) == pytest.approx(0.875)  # 3.5 of 4 pairs
    assert pope.auroc([0.5], [True]) is None


def test_paired_counts_discordant_questions(tmp_path):
    import polars as pl

    rows = [("pope", m, str(q), c) for q, (b, a) in enumerate([(1, 1), (1, 0), (0, 1), (0, 1), (0, 0)])
            for m, c in (("base", b), ("aligned", a))]
    pl.DataFrame(rows, schema=["benchmark", "model", "question_id", "correct"], orient="row") \
        .with_columns(pl.col("correct").cast(pl.Boolean)).write_parquet(tmp_path / "r.parquet")
    p = verdict.paired(tmp_path / "r.parquet")["pope"]
    # d = 0, -1, +1, +1, 0: mean 0.2, sample sd sqrt(0.7)
    assert (p["n"], p["b"], p["c"]) == (5, 1, 2)
    assert p["delta_accuracy"] == pytest.approx(20.0) and p["se"] == pytest.approx(100 * 0.7 ** 0.5 / 5 ** 0.5)


def test_verdict_pools_seeds_and_reports_controls_and_gates():
    gate = {"pope_f1": {"value": 0.8, "threshold": "0.7..0.88", "passed": True}}
    runs = [{**r, "gates": gate if r["seed"] else {"pope_f1": {**gate["pope_f1"], "value": 0.9, "passed": False}},
             "paired": {"pope": {"n": 10, "b": 1, "c": 3 + r["seed"], "delta_accuracy": 0.0, "se": 1.0},
                        "gqa": {"n": 10, "b": 0, "c": 0, "delta_accuracy": -1.0, "se": 2.0}}}
            for r in RUNS[:3]] + [{**RUNS[3], "setting": "swapped"}]
    v = verdict.verdict(runs, "paper", ["swapped"])
    assert v["pope_f1_delta"] == [2.0, 6.0, 1.0] and v["seeds"] == [0, 1, 2]
    assert v["pope_mcnemar"] == {"b_base_only": 3, "c_aligned_only": 12}
    assert v["pope_f1_mcnemar_p"] == pytest.approx(verdict.mcnemar_p(3, 12))
    assert v["gates"]["pope_f1"] == {"value": [0.9, 0.8, 0.8], "threshold": "0.7..0.88", "passed": False}
    assert v["pairs"] == {"only_chosen_right": 1 + 2 + 3, "only_rejected_right": 0}
    assert v["controls"] == {"swapped": {"seeds": [0], "pope_f1_delta": [-10.0]}}
    # gqa: mean delta -1 over SE sqrt(3 * 2^2) / 3
    assert v["worst_other_delta_in_se"] == pytest.approx(-1 / (12 ** 0.5 / 3))
    md = "\n".join(verdict.markdown({**v, "auroc_delta": [0.01, -0.02, 0.04]}))
    assert "| gate `pope_f1` (0.7..0.88) | 0.900 | 0.800 | 0.800 | **failed** |" in md
    shape = {"heldout_shape": {"value": 0.81, "threshold": ">= 0.8", "passed": True, "se": 0.02}}
    v_se = verdict.verdict([{**r, "gates": shape} for r in runs[:3]], "paper", [])
    assert v_se["gates"]["heldout_shape"]["se"] == [0.02, 0.02, 0.02]
    assert "| gate `heldout_shape` (>= 0.8) | 0.810 ± 0.020 | 0.810 ± 0.020 | 0.810 ± 0.020 | passed |" in \
        "\n".join(verdict.markdown({**v_se, "auroc_delta": []}))
    assert "| POPE F1 Δ | +2.00 | +6.00 | +1.00 | McNemar p = " in md
    assert "| POPE AUROC of p(yes) Δ ×100 | +1.00 | -2.00 | +4.00 | mean +1.00 |" in md
    assert "| control `swapped`: POPE F1 Δ | -10.00 | – | – |  |" in md  # seed 0 only: the others' cells stay empty
    assert "only the chosen answer right 6, only the rejected 0" in md


def test_each_setting_gets_its_own_verdict_in_the_table(tmp_path):
    """paper: F1 +2, +6, +1 (3 of 3 up), AUROC +1, -2, +4 x100 (mean +1, SE 3 / sqrt 3), gqa -1 over SE 2·sqrt(3)/3;
    noise-800: F1 -10 on its one seed, no AUROC; one setting alone gets no such section."""
    paired = {"pope": {"n": 10, "b": 1, "c": 3, "delta_accuracy": 0.0, "se": 1.0},
              "gqa": {"n": 10, "b": 0, "c": 0, "delta_accuracy": -1.0, "se": 2.0}}
    runs = [{**r, "paired": paired, **({"auroc": {"base": 0.9, "aligned": 0.9 + a}} if a is not None else {})}
            for r, a in zip(RUNS, (0.01, -0.02, 0.04, None))]
    table = (experiment.write(_exp(tmp_path), runs) / "table.md").read_text()
    assert "### Each setting's verdict" in table
    assert (f"| paper | 3 of 3 | {verdict.mcnemar_p(3, 9):.2g} | +1.00 ± {3 / 3 ** 0.5:.2f} | "
            f"{-1 / (12 ** 0.5 / 3):+.2f} |") in table
    assert f"| noise-800 | 0 of 1 | {verdict.mcnemar_p(1, 3):.2g} | – | -0.50 |" in table
    one = experiment.ExperimentConfig(out=tmp_path / "one", settings=[{"name": "paper"}])
    assert "Each setting's verdict" not in (experiment.write(one, runs[:3]) / "table.md").read_text()


def test_a_base_model_failing_a_gate_is_refused_by_name(tmp_path):
    d = tmp_path / "pretrain"
    d.mkdir()
    gates = {"heldout_shape": {"value": 0.34, "threshold": ">= 0.8", "passed": False},
             "pope_f1": {"value": 0.8, "threshold": "0.7..0.88", "passed": True}}
    (d / "manifest.json").write_text(json.dumps({"stats": {"gates": gates}}))
    with pytest.raises(experiment.InputError, match=r"paper seed 2: .*heldout_shape = 0.34 \(needs >= 0.8\)") as e:
        experiment.check_gates("paper", 2, {"pretrain": {"path": str(d)}})
    assert "pope_f1" not in str(e.value)
    gates["heldout_shape"]["passed"] = True
    (d / "manifest.json").write_text(json.dumps({"stats": {"gates": gates}}))
    experiment.check_gates("paper", 2, {"pretrain": {"path": str(d)}})  # passes: no error


def test_paired_results_pool_over_seeds_into_the_table(tmp_path):
    """Discordant counts add (b 1+0, c 4+3: p = 2·(1+8)/2^8); the seeds' SEs add in quadrature over n."""
    runs = [{**_run("paper", 0, 7, (60.0, 62.0), (40.0, 40.0)),
             "paired": {"pope": {"n": 10, "b": 1, "c": 4, "delta_accuracy": 30.0, "se": 15.0}}},
            {**_run("paper", 1, 9, (60.0, 66.0), (40.0, 38.0)),
             "paired": {"pope": {"n": 10, "b": 0, "c": 3, "delta_accuracy": 20.0, "se": 15.0}}}]
    pooled = verdict.pooled(runs)["pope"]
    assert (pooled["n"], pooled["b"], pooled["c"]) == (20, 1, 7)
    assert pooled["p"] == pytest.approx(18 / 256) and pooled["delta_accuracy"] == pytest.approx(25.0)
    assert pooled["se"] == pytest.approx((2 * 15.0 ** 2) ** 0.5 / 2)
    exp = experiment.ExperimentConfig(out=tmp_path / "out", seeds=[0, 1], settings=[{"name": "paper"}])
    table = (experiment.write(exp, runs) / "table.md").read_text()
    assert "| paper | +25.00 ± 10.61 (p=0.07) |" in table


def test_readme_section_is_the_experiment_table(tmp_path):
    out = experiment.write(_exp(tmp_path), RUNS)
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- experiments/out: begin -->\nold numbers\n<!-- experiments/out: end -->\noutro\n")
    assert readme_section.publish(out, readme)
    text = readme.read_text()
    assert "old numbers" not in text and text.startswith("intro\n") and text.endswith("<!-- experiments/out: end -->\noutro\n")
    assert (out / "table.md").read_text() in text
    plain = tmp_path / "PLAIN.md"
    plain.write_text("no markers\n")
    assert not readme_section.publish(out, plain) and plain.read_text() == "no markers\n"


def test_readme_names_the_commit_and_says_when_the_tree_differs_from_it(tmp_path):
    import subprocess

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "preset.yaml").write_text("steps: 1\n")
    (tmp_path / "README.md").write_text("<!-- experiments/out: begin -->\n<!-- experiments/out: end -->\n")
    out = experiment.write(_exp(tmp_path), RUNS)
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c")
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    (out / "table.md").write_text((out / "table.md").read_text() + "new numbers\n")  # its own outputs do not count
    assert readme_section.publish(out, tmp_path / "README.md")
    assert f"at commit {head}:" in (tmp_path / "README.md").read_text()
    (tmp_path / "preset.yaml").write_text("steps: 2\n")  # measured on an edited preset
    assert readme_section.publish(out, tmp_path / "README.md")
    assert f"at commit {head} with uncommitted changes:" in (tmp_path / "README.md").read_text()


def test_concurrent_runs_share_the_cores_and_pass_the_share_on(monkeypatch):
    """Two runs on two CPUs: one thread each, here and in the processes a run starts (its vLLM workers)."""
    import subprocess
    import sys

    import torch

    before = torch.get_num_threads()
    monkeypatch.setenv(experiment.THREADS, "0")  # recorded as it was, so that teardown restores it
    monkeypatch.delenv(experiment.THREADS)
    monkeypatch.setattr(experiment.os, "sched_getaffinity", lambda pid: {0, 1})
    try:
        assert experiment.share_cores(1) is None and experiment.THREADS not in experiment.os.environ  # alone: all
        assert experiment.share_cores(2) == 1 and torch.get_num_threads() == 1
        child = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
                               capture_output=True, text=True, check=True)
        assert child.stdout.strip() == "1"
        monkeypatch.setattr(experiment.os, "sched_getaffinity", lambda pid: set(range(8)))
        monkeypatch.setenv(experiment.THREADS, "3")  # the user's count is kept
        assert experiment.share_cores(2) is None and experiment.os.environ[experiment.THREADS] == "3"
    finally:
        torch.set_num_threads(before)
