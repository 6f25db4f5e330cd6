"""The evaluate stage: config checks, cache keys, and a run on toy benchmarks (hf engine, fake judge)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import polars as pl
import pytest

from seva_tasks.stages import evaluate, toy
from seva_tasks.benchmarks import write_toy_world
from seva_tasks.errors import InputError


def _artifacts(tmp_path: Path, model: Path) -> tuple[Path, Path]:
    """A fake train artifact (manifest naming the base model, merged/ = a copy) and filter artifact."""
    train = tmp_path / "artifacts" / "train" / "k1"
    train.mkdir(parents=True)
    (train / "manifest.json").write_text(json.dumps({"config": {"model": str(model)}}))
    shutil.copytree(model, train / "merged")
    os.utime(train / "merged" / "model.safetensors")  # new weights: a new mtime, as a real merge has
    filt = tmp_path / "artifacts" / "filter" / "f1"
    filt.mkdir(parents=True)
    pl.DataFrame({"chosen_tokens": [5, 9, 12], "rejected_tokens": [4, 20, 7]}).write_parquet(filt / "pairs.parquet")
    return train, filt


def test_unknown_benchmark_is_rejected():
    with pytest.raises(ValueError, match="unknown benchmarks \\['vqav2'\\]"):
        evaluate.EvaluateConfig(benchmarks=["pope", "vqav2"])


def test_answers_key_depends_on_model_and_data_not_on_training(tmp_path):
    write_toy_world(tmp_path / "eval", seed=0, n_shapes=2, n_signs=1, n_books=1)
    model = tmp_path / "m"
    model.mkdir()
    (model / "w.bin").write_bytes(b"1")
    cfg = evaluate.EvaluateConfig(data_root=tmp_path / "eval")
    k1, _ = evaluate._answers_key(cfg, "pope", model)
    assert k1 == evaluate._answers_key(evaluate.EvaluateConfig(data_root=tmp_path / "eval"), "pope", model)[0]
    assert k1 != evaluate._answers_key(cfg.model_copy(update={"max_new_tokens": 8}), "pope", model)[0]
    (model / "w.bin").write_bytes(b"22")
    assert k1 != evaluate._answers_key(cfg, "pope", model)[0]


def test_missing_benchmark_files_say_where_to_put_them(tmp_path):
    model = toy.model_dir(toy.ToyConfig())
    if not (model / "config.json").exists():
        pytest.skip("needs the toy model")
    train, filt = _artifacts(tmp_path, model)
    cfg = evaluate.EvaluateConfig(data_root=tmp_path / "nowhere", benchmarks=["gqa"])
    with pytest.raises(InputError, match=r"nowhere/gqa: no gqa files.*evaluate.dirs.gqa"):
        evaluate.run(cfg, {"train": train, "filter": filt}, tmp_path / "out")


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_evaluate_compares_models_and_reuses_base_answers(tmp_path):
    """Both models answer (hf engine, a worker process each), judged benchmarks go to a fake judge;
    after "retraining" only the aligned model is asked and judged again."""
    from test_judge import FakeJudge

    cfg_toy = toy.ToyConfig()
    toy.ensure(cfg_toy)
    model = toy.model_dir(cfg_toy)
    write_toy_world(tmp_path / "eval", seed=0, n_shapes=3, n_signs=1, n_books=1)
    train, filt = _artifacts(tmp_path, model)
    judge = FakeJudge(lambda body, n: "0.5" if body["max_tokens"] == 3 else "8 6\nfine")
    try:
        cfg = evaluate.EvaluateConfig(engine="hf", dtype="float32", data_root=tmp_path / "eval", max_new_tokens=4,
                                      benchmarks=["pope", "mme", "sqa", "mmbench", "mmvet", "llava_bench"],
                                      judge_mode="server", judge={"base_url": judge.url, "model": "fake", "runs": 2})
        out = tmp_path / "artifacts" / "evaluate" / "e1"
        out.mkdir(parents=True)
        stats = evaluate.run(cfg, {"train": train, "filter": filt}, out)
        calls_first = len(judge.requests)

        res = pl.read_parquet(out / evaluate.RESULTS)
        assert set(res["model"]) == {"base", "aligned"} and set(res["benchmark"]) == set(cfg.benchmarks)
        metrics = json.loads((out / evaluate.METRICS).read_text())
        mmvet = metrics["benchmarks"]["mmvet"]
        assert mmvet["base"]["score"] == pytest.approx(50.0) and mmvet["delta"] == pytest.approx(0.0)
        assert metrics["benchmarks"]["llava_bench"]["aligned"]["relative"] == pytest.approx(75.0)
        assert metrics["judge"]["served_model"] == ["fake-judge-v1"]
        assert (out / "report.md").read_text().count("| MM-Vet | score |") == 1
        assert (out / "plots" / "benchmarks.png").stat().st_size > 0 and (out / "plots" / "lengths.png").exists()
        assert not (out / evaluate.WORK).exists()
        assert stats["answers"]["base"]["pope"] != stats["answers"]["aligned"]["pope"]

        # "retrain": new merged weights; the base model's answers and scores come from the store
        answers = tmp_path / "artifacts" / "answers"
        base_manifest = (answers / stats["answers"]["base"]["pope"] / "manifest.json").read_text()
        os.utime(train / "merged" / "model.safetensors", (1, 1))
        out2 = tmp_path / "artifacts" / "evaluate" / "e2"
        out2.mkdir()
        stats2 = evaluate.run(cfg, {"train": train, "filter": filt}, out2)
        assert stats2["answers"]["base"] == stats["answers"]["base"]
        assert stats2["answers"]["aligned"]["pope"] != stats["answers"]["aligned"]["pope"]
        assert (answers / stats["answers"]["base"]["pope"] / "manifest.json").read_text() == base_manifest
        assert len(judge.requests) - calls_first == calls_first // 2  # only the aligned model was judged
    finally:
        judge.close()
