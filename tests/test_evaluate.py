"""The baseline and evaluate stages: config checks, cache keys, and a run on toy benchmarks (hf engine, fake judge)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import polars as pl
import pytest

from seva_tasks import pipeline, toy
from seva_tasks.toy.benchmarks import write_toy_world
from seva_tasks.benchmarks.protocol import WORK, EvaluateConfig
from seva_tasks.config import load_config
from seva_tasks.fingerprint import fingerprint
from seva_tasks.errors import InputError
from seva_tasks.stages import baseline, evaluate


def _artifacts(tmp_path: Path, model: Path) -> tuple[Path, Path]:
    """A fake train artifact (merged/ = a copy of the base model) and filter artifact."""
    train = tmp_path / "artifacts" / "train" / "k1"
    train.mkdir(parents=True)
    shutil.copytree(model, train / "merged")
    filt = tmp_path / "artifacts" / "filter" / "f1"
    filt.mkdir(parents=True)
    pl.DataFrame({"chosen_tokens": [5, 9, 12], "rejected_tokens": [4, 20, 7]}).write_parquet(filt / "pairs.parquet")
    return train, filt


def test_unknown_benchmark_is_rejected():
    with pytest.raises(ValueError, match="unknown benchmarks \\['vqav2'\\]"):
        EvaluateConfig(benchmarks=["pope", "vqav2"])


def test_baseline_key_depends_on_model_and_benchmarks_not_on_training(tmp_path):
    write_toy_world(tmp_path / "eval", seed=0, n_shapes=2, n_signs=1, n_books=1)
    model = tmp_path / "m"
    model.mkdir()
    (model / "w.bin").write_bytes(b"1")
    base = {"pretrain": None, "model": str(model), "data_dir": str(tmp_path), "evaluate.data_root": str(tmp_path / "eval")}
    key = lambda **over: pipeline.key_for(load_config("toy", {**base, **over}), "baseline", {})  # noqa: E731
    k1 = key()
    assert k1 == key(**{"train.beta": 0.5, "augment.noise_step": 800, "filter.mode": "seva"})
    assert k1 != key(**{"evaluate.max_new_tokens": 8})
    (model / "w.bin").write_bytes(b"22")
    k2 = key()
    assert k2 != k1
    pope = next((tmp_path / "eval" / "pope").rglob("*.json*"))
    pope.write_text(pope.read_text() + "\n")
    assert key() != k2


def test_missing_benchmark_files_say_where_to_put_them(tmp_path):
    model = toy.model_dir(toy.ToyConfig())
    if not (model / "config.json").exists():
        pytest.skip("needs the toy model")
    cfg = EvaluateConfig(data_root=tmp_path / "nowhere", benchmarks=["gqa"])
    with pytest.raises(InputError, match=r"nowhere/gqa: no gqa files.*evaluate.dirs.gqa"):
        baseline.run(cfg, {"model": model}, tmp_path / "out")


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_evaluate_compares_aligned_with_baseline_and_asks_only_the_aligned_model(tmp_path):
    """baseline answers with the base model (hf engine, a worker process), judged benchmarks go to a
    fake judge; evaluate asks and judges only the aligned model and compares it with those scores."""
    from test_judge import FakeJudge

    cfg_toy = toy.ToyConfig()
    toy.ensure(cfg_toy)
    model = toy.model_dir(cfg_toy)
    write_toy_world(tmp_path / "eval", seed=0, n_shapes=3, n_signs=1, n_books=1)
    train, filt = _artifacts(tmp_path, model)
    judge = FakeJudge(lambda body, n: "0.5" if body["max_tokens"] == 3 else "8 6\nfine")
    try:
        cfg = EvaluateConfig(engine={"kind": "hf", "dtype": "float32", "logprobs": 3}, data_root=tmp_path / "eval", max_new_tokens=4,
                             benchmarks=["pope", "mme", "sqa", "mmbench", "mmvet", "llava_bench"],
                             judge_mode="server", judge={"base_url": judge.url, "model": "fake", "runs": 2})
        base_dir = tmp_path / "artifacts" / "baseline" / "b1"
        base_dir.mkdir(parents=True)
        base_stats = baseline.run(cfg, {"model": model}, base_dir)
        calls_base = len(judge.requests)
        assert sorted(p.name for p in (base_dir / "answers").iterdir()) == sorted(f"{n}.jsonl" for n in cfg.benchmarks)
        assert base_stats["answers"]["pope"]["answered"] == base_stats["answers"]["pope"]["questions"] > 0
        assert not (base_dir / WORK).exists()

        out = tmp_path / "artifacts" / "evaluate" / "e1"
        out.mkdir(parents=True)
        evaluate.run(cfg, {"model": model, "train": train, "filter": filt, "baseline": base_dir}, out)
        res = pl.read_parquet(out / evaluate.RESULTS)
        assert set(res["model"]) == {"base", "aligned"} and set(res["benchmark"]) == set(cfg.benchmarks)
        metrics = json.loads((out / evaluate.METRICS).read_text())
        assert metrics["models"] == {"base": fingerprint(model), "aligned": fingerprint(train / "merged")}  # by content
        assert json.loads((base_dir / "metrics.json").read_text())["model"] == fingerprint(model)
        assert str(tmp_path) not in (out / "report.md").read_text() + (out / "metrics.json").read_text()
        mmvet = metrics["benchmarks"]["mmvet"]
        assert mmvet["base"]["score"] == pytest.approx(50.0) and mmvet["delta"] == pytest.approx(0.0)
        assert metrics["benchmarks"]["llava_bench"]["aligned"]["relative"] == pytest.approx(75.0)
        assert metrics["judge"]["served_model"] == ["fake-judge-v1"]
        assert (out / "report.md").read_text().count("| MM-Vet | score |") == 1
        assert (out / "plots" / "benchmarks.png").stat().st_size > 0 and (out / "plots" / "lengths.png").exists()
        assert not (out / WORK).exists()
        # the same model answers the same way: base and aligned rows agree, and only the aligned model was judged
        pope = res.filter(pl.col("benchmark") == "pope").sort("question_id")
        assert pope.filter(pl.col("model") == "base")["answer"].to_list() == pope.filter(pl.col("model") == "aligned")["answer"].to_list()
        assert len(judge.requests) - calls_base == calls_base
        # engine.logprobs: every answer keeps its first token's top 3, and POPE scores p(yes) as an AUROC
        first = [json.loads(x)["metadata"]["first_token_logprobs"] for x in (out / "answers" / "pope.jsonl").read_text().splitlines()]
        assert first and all(len(a) == 3 and a[0][1] >= a[1][1] >= a[2][1] for a in first)
        area = metrics["benchmarks"]["pope"]["base"]["auroc"]
        assert 0 <= area <= 100 and metrics["benchmarks"]["pope"]["aligned"]["auroc"] == area
    finally:
        judge.close()
