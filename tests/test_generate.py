"""Stage `generate`: sharded, resumable generation in worker processes (hf here; one vLLM run, slow)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from seva_tasks.config import ROOT
from seva_tasks.engines import EngineConfig
from seva_tasks.errors import StageError
from seva_tasks.stages.generate import OUTPUT, WORK, GenerateConfig, run

SHARDS = 8  # 8 rows x 2 sides / shard_size 2
MODEL = ROOT / "data" / "toy" / "model"  # the random tiny LLaVA (the toy world's base model)


@pytest.fixture(scope="module")
def augmented(tmp_path_factory) -> Path:
    """A small toy sample -> augment chain (8 rows, exact noise at step 500)."""
    from seva_tasks import pipeline
    from seva_tasks.config import load_config

    cfg = load_config("toy", {"data_dir": str(tmp_path_factory.mktemp("data")),
                              "sample.subsets": {"ocr_vqa": {"images": 4, "questions_per_image": 1},
                                                 "textvqa": {"images": 4, "questions_per_image": 1}}})
    pipeline.prepare(cfg)
    refs: dict = {}
    for name in ("sample", "augment"):
        refs[name] = pipeline.run_stage(cfg, name, refs)
    return Path(refs["augment"]["path"])


def _cfg(**kw) -> GenerateConfig:
    """The stage config with engine settings (kind, python, max_model_len, ...) given flat, as a shorthand."""
    engine = {"kind": "hf", "dtype": "float32", "max_model_len": 512, "kv_cache_memory_bytes": 64 << 20}
    engine.update({k: kw.pop(k) for k in list(kw) if k in EngineConfig.model_fields})
    return GenerateConfig(**{"max_new_tokens": 16, "shard_size": 2, **kw, "engine": engine})


@pytest.fixture(scope="module")
def uninterrupted(augmented, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("gen-hf")
    return out, run(_cfg(), {"augment": augmented, "model": MODEL}, out)


def _wait_for_results(out: Path, n: int, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if len(list((out / WORK / "results").glob("shard-*.parquet"))) >= n:
            return
        time.sleep(0.05)
    raise AssertionError(f"fewer than {n} shards finished in {timeout} s")


def _assert_resumed(augmented: Path, out: Path, reference: Path) -> None:
    stats = run(_cfg(), {"augment": augmented, "model": MODEL}, out)
    assert stats["shards_reused"] >= 2 and stats["shards_run"] == SHARDS - stats["shards_reused"] >= 1
    assert (out / OUTPUT).read_bytes() == (reference / OUTPUT).read_bytes()
    assert not (out / WORK).exists()


def test_output_names_the_model_by_content_not_by_place(augmented, uninterrupted, tmp_path):
    """The key counts the model by content, so a copy of it elsewhere must publish the same bytes."""
    import polars as pl

    from seva_tasks.fingerprint import fingerprint

    out, _ = uninterrupted
    moved = tmp_path / "elsewhere" / "model"
    shutil.copytree(MODEL, moved)
    run(_cfg(), {"augment": augmented, "model": moved}, tmp_path / "out")
    assert (tmp_path / "out" / OUTPUT).read_bytes() == (out / OUTPUT).read_bytes()
    assert set(pl.read_parquet(out / OUTPUT)["model"]) == {fingerprint(MODEL)}


def test_generate_writes_both_answers_per_row(uninterrupted):
    import polars as pl

    out, stats = uninterrupted
    df = pl.read_parquet(out / OUTPUT)
    assert df.height == stats["counts"]["rows"] == 8 and stats["drops"] == {}
    assert df["chosen"].null_count() == df["rejected"].null_count() == 0
    assert set(df["chosen_finish"]) | set(df["rejected_finish"]) <= {"stop", "length"}
    assert (df["chosen_tokens"] == df["chosen_token_ids"].list.len()).all()
    assert df["prompt"][0].startswith("A chat between a curious human") and df["conv_template"][0] == "llava_v1"
    assert len(stats["shards"]) == SHARDS and stats["totals"]["gen_tokens"] == int(df["chosen_tokens"].sum() + df["rejected_tokens"].sum())
    assert all(s["gen_tokens_per_s"] > 0 for s in stats["shards"])
    assert not (out / WORK).exists()


def test_kill9_of_worker_is_a_stage_error_naming_the_shard_then_resumes(augmented, uninterrupted, tmp_path):
    errors: list[BaseException] = []
    t = threading.Thread(target=lambda: errors.append(pytest.raises(StageError, run, _cfg(), {"augment": augmented, "model": MODEL}, tmp_path).value))
    t.start()
    _wait_for_results(tmp_path, 2)
    os.kill(int((tmp_path / WORK / "worker-0.pid").read_text()), signal.SIGKILL)
    t.join(timeout=120)
    msg = str(errors[0])
    assert "killed by signal 9 while on shard shard-0000" in msg and "rerun" in msg
    _assert_resumed(augmented, tmp_path, uninterrupted[0])


def test_kill9_of_the_flow_resumes_only_unfinished_shards(augmented, uninterrupted, tmp_path):
    code = ("import sys; from pathlib import Path; sys.path.insert(0, 'tests'); from test_generate import MODEL, _cfg, run; "
            f"run(_cfg(), {{'augment': Path({str(augmented)!r}), 'model': MODEL}}, Path({str(tmp_path)!r}))")
    flow = subprocess.Popen([sys.executable, "-c", code], cwd=Path(__file__).parents[1])
    _wait_for_results(tmp_path, 2)
    flow.kill()
    flow.wait()
    worker = int((tmp_path / WORK / "worker-0.pid").read_text())
    for _ in range(100):  # PR_SET_PDEATHSIG: the worker dies with the flow
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.kill(worker, signal.SIGKILL)
        raise AssertionError("the worker outlived the killed flow")
    _assert_resumed(augmented, tmp_path, uninterrupted[0])


def test_worker_crash_is_a_stage_error_naming_the_shard(augmented, tmp_path):
    crash = tmp_path / "python"
    crash.write_text("#!/bin/sh\necho 'CUDA out of memory (simulated)' >&2\nexit 3\n")
    crash.chmod(0o755)
    with pytest.raises(StageError, match=r"exited with code 3 while on shard shard-00000 \(0/8(.|\n)*simulated"):
        run(_cfg(python=crash), {"augment": augmented, "model": MODEL}, tmp_path / "out")


def test_missing_engine_interpreter_is_a_stage_error(augmented, tmp_path):
    with pytest.raises(StageError, match="No engine interpreter at /nonexistent/python"):
        run(_cfg(python="/nonexistent/python"), {"augment": augmented, "model": MODEL}, tmp_path)


@pytest.mark.slow
def test_vllm_and_hf_greedy_agree_token_for_token(augmented, uninterrupted, tmp_path):
    """One vLLM start: clean images (PIL) and exact-noise rows (embeddings) against HF batch 1."""
    import polars as pl

    stats = run(_cfg(kind="vllm", shard_size=8), {"augment": augmented, "model": MODEL}, tmp_path)
    assert stats["engine"] == "vllm" and stats["shards_run"] == 2
    v = pl.read_parquet(tmp_path / OUTPUT)
    h = pl.read_parquet(uninterrupted[0] / OUTPUT)
    assert v["id"].to_list() == h["id"].to_list()
    for side in ("chosen", "rejected"):
        assert v[f"{side}_token_ids"].to_list() == h[f"{side}_token_ids"].to_list(), side
        assert v[side].to_list() == h[side].to_list(), side
    assert v["prompt_tokens"].to_list() == h["prompt_tokens"].to_list()


def test_overlong_prompt_rows_are_dropped_with_reason_not_left_empty(augmented, uninterrupted, tmp_path):
    import polars as pl

    lengths = pl.read_parquet(uninterrupted[0] / OUTPUT)["prompt_tokens"]
    limit = int(lengths.max())  # rows whose prompt fills the context are dropped, the rest answered
    stats = run(_cfg(max_model_len=limit, shard_size=16), {"augment": augmented, "model": MODEL}, tmp_path)
    long = int((lengths >= limit).sum())
    assert 0 < long < 8 and stats["drops"] == {"prompt_too_long": long}
    dropped = pl.read_parquet(tmp_path / "unanswered.parquet")
    assert dropped.height == 2 * long and set(dropped["side"]) == {"chosen", "rejected"}
    assert dropped["detail"][0].startswith(f"prompt_too_long: {limit} prompt tokens >= max_model_len {limit}")
    out = pl.read_parquet(tmp_path / OUTPUT)
    assert out.height == 8 - long and out["chosen"].null_count() == 0 and (out["prompt_tokens"] < limit).all()
