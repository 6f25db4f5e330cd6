"""Iterative SeVa: `rounds: k` runs sample…evaluate again per round, starting from the last round's merged model.

The graph and per-round config are checked without a model; the end-to-end test runs a small toy run
through a real Prefect server: rounds=2, then rounds=3, which computes only round 3.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from conftest import deploy, task_states
from seva_tasks import pipeline, toy
from seva_tasks.benchmarks import load_questions
from seva_tasks.config import load_config
from seva_tasks.errors import ConfigError
from seva_tasks.fingerprint import fingerprint
from seva_tasks.toy import ToyConfig


def test_round_overrides_apply_to_their_round_only_and_resample_by_default():
    cfg = load_config("toy", ["rounds=3", "round.2.train.learning_rate=1e-4", "sample.seed=5"])
    assert list(cfg.round) == [2] and list(cfg.round[2]) == ["train"]
    r2, r3 = cfg.at_round(2), cfg.at_round(3)
    assert (cfg.train.learning_rate, r2.train.learning_rate, r3.train.learning_rate) == (5e-4, 1e-4, 5e-4)
    assert (cfg.sample.seed, r2.sample.seed, r3.sample.seed) == (5, 1005, 2005)  # a fresh draw per round
    assert r2.train.beta == cfg.train.beta and r2.evaluate == cfg.evaluate  # the rest is round 1's
    same = load_config("toy", ["rounds=2", "rounds_resample=false"])
    assert same.at_round(2).sample == same.sample
    # A round's own seed wins over resampling; YAML's int keys and the CLI's string keys are one round.
    pinned = load_config("toy", {"rounds": 2, "round": {2: {"sample": {"seed": 9}}}, "round.2.train.beta": 0.3})
    assert pinned.at_round(2).sample.seed == 9 and pinned.at_round(2).train.beta == 0.3


@pytest.mark.parametrize("override, named", [
    ("round.2.train.learning_rate=fast", "round.2.train.learning_rate: Input should be a valid number"),
    ("round.2.train.nope=1", "round.2.train.nope: unknown key"),
    ("round.2.evaluate.max_new_tokens=3", "round.2: evaluate cannot change per round"),
    ("round.1.train.beta=0.2", "round.1: per-round overrides start at round 2"),
    ("round.2.train.loss_type=exo_pair", "round.2.train: Value error, train.label_smoothing must be > 0"),
])
def test_bad_round_overrides_fail_at_load_naming_the_key(override, named):
    with pytest.raises(ConfigError) as e:
        load_config("toy", ["rounds=2", override])
    assert named in str(e.value), str(e.value)


def test_round_graph_nodes_and_inputs():
    cfg = load_config("toy", ["rounds=3"])
    nodes = pipeline.nodes(cfg)
    assert nodes[:8] == ("pretrain", "sample", "augment", "generate", "filter", "train", "baseline", "evaluate")
    assert nodes[8:] == tuple(f"{s}[r{r}]" for r in (2, 3) for s in pipeline.ROUND_STAGES)
    # Round r generates and trains from round r-1's model; evaluate compares with the one baseline.
    assert pipeline.deps(cfg, "generate[r2]") == {"augment": "augment[r2]", "model": "train"}
    assert pipeline.deps(cfg, "train[r3]") == {"filter": "filter[r3]", "model": "train[r2]"}
    assert pipeline.deps(cfg, "evaluate[r3]") == {"filter": "filter[r3]", "train": "train[r3]", "baseline": "baseline",
                                                  "model": "pretrain", "previous": "evaluate[r2]"}
    upstream = {"train": {"path": "/store/train/k1"}, "pretrain": {"path": "/store/pretrain/k0"}}
    assert pipeline.model_input(cfg, "generate[r2]", upstream) == Path("/store/train/k1/merged")
    assert pipeline.model_input(cfg, "generate", upstream) == Path("/store/pretrain/k0/model")
    assert pipeline.stages_until(cfg, "augment[r3]") == ("sample[r3]", "augment[r3]")
    assert "train[r2]" in pipeline.stages_until(cfg, "generate[r3]")
    with pytest.raises(ConfigError, match="not in this run"):
        pipeline.stages_until(load_config("toy"), "train[r2]")
    with pytest.raises(ConfigError, match="Unknown stage 'baseline\\[r2\\]'"):
        pipeline.parse("baseline[r2]")


def test_a_round_without_new_inputs_is_round_one_artifact():
    """Keys name inputs, not rounds: sample[r2] without resampling is sample's artifact; with it, a new draw."""
    same = load_config("toy", ["rounds=2", "rounds_resample=false"])
    assert pipeline.key_for(same, "sample[r2]", {}) == pipeline.key_for(same, "sample", {})
    fresh = load_config("toy", ["rounds=2"])
    assert pipeline.key_for(fresh, "sample[r2]", {}) != pipeline.key_for(fresh, "sample", {})
    assert pipeline.key_for(fresh, "sample", {}) == pipeline.key_for(same, "sample", {})  # round 1 untouched


def _manifest(ref_dir: Path) -> dict:
    return json.loads((ref_dir / "manifest.json").read_text())


def _published(data: Path, stage: str) -> dict[int, Path]:
    """Published artifacts of a stage by the round that made them (last one wins)."""
    dirs = [p for p in (data / "artifacts" / stage).iterdir() if (p / "manifest.json").is_file()]
    return {_manifest(p)["round"]: p for p in sorted(dirs, key=lambda p: _manifest(p)["timings"]["started"])}


@pytest.mark.slow
def test_rounds_through_prefect_generate_with_the_last_round_model_and_cache_per_round(server, small_run, tmp_path):
    data = tmp_path / "data"
    # The transformers engine (vLLM's parity is tested elsewhere): ~10 s a stage instead of ~50.
    # A gentle learning rate keeps pairs alive for round 3 (at 5e-4 round 2's model gives every noised image
    # the clean answer) and still changes a few of round 1's answers.
    overrides = {**small_run, "data_dir": str(data), "evaluate.benchmarks": ["pope"], "generate.engine.kind": "hf",
                 "evaluate.engine.kind": "hf", "train.learning_rate": 1e-4, "rounds_resample": False}
    two = task_states(server, deploy(server, "seva/full", {"overrides": {**overrides, "rounds": 2}}))
    nodes2 = pipeline.nodes(load_config("toy", {**overrides, "rounds": 2}))
    assert {n: two.get(n) for n in nodes2} == {n: "Completed" for n in nodes2}, two

    # Round 2 generates with round 1's merged model, named by path and content.
    train, generate = _published(data, "train"), _published(data, "generate")
    model = _manifest(generate[2])["model"]
    assert model == {"path": str(train[1] / "merged"), "fingerprint": fingerprint(train[1] / "merged")}
    assert _manifest(generate[1])["model"]["path"].endswith("/model")  # round 1: pretrain's
    # Same rows (no resampling), another model: some answers change.
    r1, r2 = (pl.read_parquet(generate[r] / "generations.parquet").select("id", "chosen", "rejected") for r in (1, 2))
    assert r1["id"].to_list() == r2["id"].to_list()
    assert (r1["chosen"] != r2["chosen"]).sum() + (r1["rejected"] != r2["rejected"]).sum() > 0

    # The last round's report: base and a column per round; results.parquet keeps every round's answers.
    evaluate = _published(data, "evaluate")
    report = (evaluate[2] / "report.md").read_text()
    assert "| Benchmark | Metric | Base | Round 1 | Round 2 | Δ (last − base) |" in report
    assert (evaluate[2] / "plots" / "rounds.png").is_file()
    labels = pl.read_parquet(evaluate[2] / "results.parquet")["model"].value_counts().sort("model")
    n_pope = len(load_questions("pope", toy.root_dir(ToyConfig()) / "eval" / "pope"))  # every POPE question, per model
    assert n_pope > 100 and dict(labels.iter_rows()) == {"aligned": n_pope, "base": n_pope, "round 1": n_pope}
    assert json.loads((evaluate[2] / "metrics.json").read_text())["models"]["rounds"] == {
        "1": fingerprint(train[1] / "merged"), "2": fingerprint(train[2] / "merged")}

    # One more round computes only round 3.
    three = task_states(server, deploy(server, "seva/full", {"overrides": {**overrides, "rounds": 3}}))
    new = {f"{s}[r3]" for s in pipeline.ROUND_STAGES}
    assert {n: three.get(n) for n in nodes2} == {n: "Cached" for n in nodes2}, three
    assert {n: three.get(n) for n in new} == {n: "Completed" for n in new}, three
    assert "| Base | Round 1 | Round 2 | Round 3 |" in (_published(data, "evaluate")[3] / "report.md").read_text()
