"""Stage `evaluate`: base vs aligned model on the LLaVA-1.5 benchmarks -> `results.parquet`,
`metrics.json`, `report.md` and `plots/`.

    seva run --until evaluate
    seva run --until evaluate evaluate.benchmarks=[pope,mme] evaluate.judge_mode=off

Each benchmark's files sit in LLaVA's `playground/data/eval/<folder>` layout under `data_root`
(seva_tasks/benchmarks). The base model and the aligned one (train's `merged/`) answer every question
through the generate stage's worker (sharded, resumable) with LLaVA-1.5's protocol: vicuna_v1
prompt, greedy, the benchmark's suffix and max_new_tokens (128 for short-answer sets, 1024 for
LLaVA-Bench, MM-Vet, MMBench, SQA). Scoring is LLaVA's rules; MM-Vet and LLaVA-Bench (and MMBench's
fallback extractor) use the judge (seva_tasks/judge.py): a `vllm serve` of `judge_model` on
127.0.0.1 (mode local), an endpoint you run (server), or none (off: those benchmarks are skipped).

Caching below the stage: one model's answers on one benchmark, and their scores, are store artifacts
of their own (`answers/<key>`, `scores/<key>`), keyed on the model's files, the benchmark's files,
the generation settings and the judge, never on the train stage. After a change to train.beta this
stage reruns, finds the base model's answers and scores, and only the aligned model is asked.

Deliberate difference: ScienceQA's text-only questions are not asked (the worker feeds one image per
prompt); SQA-IMG, the reported number, has only image questions (its `all/accuracy` counts them missing).
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from seva_tasks import benchmarks as B
from seva_tasks.base import resolve
from seva_tasks.engines import EngineConfig
from seva_tasks.llava.prompts import Template
from seva_tasks.errors import InputError
from seva_tasks.benchmarks.judge import Judge, JudgeConfig, local_vllm
from seva_tasks.store import Store, canonical, stage_key

VERSION = 1
DEPS = ("filter", "train")  # filter: the pairs' answer lengths for the report
RESUMABLE = True
RESULTS, METRICS, WORK = "results.parquet", "metrics.json", "_work"
log = logging.getLogger(__name__)


class EvaluateConfig(EngineConfig):
    """Settings of the `evaluate` stage: the engine's (EngineConfig), benchmarks and judge.

    Args: see each field's description. Defaults are LLaVA-1.5's evaluation protocol.
    """

    model: Path | None = Field(None, description="Base model directory; None: the one the train stage started from.")
    max_new_tokens: int | None = Field(None, ge=1, description="Cap on each benchmark's LLaVA budget (128 or 1024); None: LLaVA's own (the toy caps it for speed).")
    conv_template: Template = Field("vicuna_v1", description="Prompt: LLaVA-1.5's eval template 'vicuna_v1' (or 'llava_v1', 'chat_template').")
    benchmarks: list[str] = Field(default_factory=lambda: list(B.BENCHMARKS), description="Benchmarks to run, by `seva score` name.")
    data_root: Path = Field(Path("playground/data/eval"), description="Folder holding each benchmark in LLaVA's layout (pope/, MME/, gqa/, ...).")
    dirs: dict[str, Path] = Field(default_factory=dict, description="Per-benchmark folder overriding data_root/<LLaVA's folder name>.")
    shard_size: int = Field(1024, ge=1, description="Questions per worker shard: the unit of resume.")
    gpus: list[str] = Field(default_factory=list, description="GPU ids for the workers (as generate.gpus).")
    python: Path | None = Field(None, description="Worker interpreter; default .venv-vllm/bin/python for vllm.")
    judge_mode: Literal["local", "server", "off"] = Field("local", description="local: serve judge_model with vLLM on 127.0.0.1; server: use judge.base_url; off: skip judged benchmarks.")
    judge_model: Path | None = Field(None, description="Model served as the local judge; None: the base model (weak, but offline).")
    judge: JudgeConfig = Field(default_factory=JudgeConfig, description="Judge endpoint, runs, retries (seva_tasks/judge.py).")

    @field_validator("benchmarks")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        unknown = [b for b in v if b not in B.BENCHMARKS]
        if unknown:
            raise ValueError(f"unknown benchmarks {unknown}; choose from: {', '.join(B.BENCHMARKS)}")
        return v


def _files_id(root: Path, suffixes: tuple[str, ...] = ()) -> dict | None:
    """name -> [size, mtime_ns] of the files under root (only `suffixes` if given); None if absent."""
    if not root.exists():
        return None
    return {p.relative_to(root).as_posix(): [p.stat().st_size, p.stat().st_mtime_ns] for p in sorted(root.rglob("*"))
            if (not suffixes or p.suffix in suffixes) and p.is_file()}


def _data_dir(cfg: EvaluateConfig, name: str) -> Path:
    return resolve(cfg.dirs.get(name, Path(cfg.data_root) / B.get(name).DIR))


def _data_id(cfg: EvaluateConfig, name: str) -> dict | None:
    """A benchmark's annotation files (images are addressed by them and not re-read)."""
    return _files_id(_data_dir(cfg, name), (".json", ".jsonl", ".tsv", ".txt"))


def fingerprint(cfg: EvaluateConfig) -> dict:
    """External inputs: each benchmark's annotation files and the base and judge models' files."""
    return {"data": {n: _data_id(cfg, n) for n in cfg.benchmarks},
            "model": _files_id(resolve(cfg.model)) if cfg.model else None,
            "judge_model": _files_id(resolve(cfg.judge_model)) if cfg.judge_model else None}


def _base_model(cfg: EvaluateConfig, train_dir: Path) -> Path:
    if cfg.model is not None:
        return resolve(cfg.model)
    return resolve(json.loads((train_dir / "manifest.json").read_text())["config"]["model"])


def _budget(cfg: EvaluateConfig, name: str) -> int:
    mnt = B.get(name).MAX_NEW_TOKENS
    return min(mnt, cfg.max_new_tokens) if cfg.max_new_tokens else mnt


# ---------------------------------------------------------------------------- answers

def _answers_key(cfg: EvaluateConfig, name: str, model: Path) -> tuple[str, dict]:
    """Key of one model's answers on one benchmark: model files, benchmark files, generation settings."""
    engine = {k: getattr(cfg, k) for k in EngineConfig.model_fields if k not in ("model", "max_new_tokens")}
    config = {"benchmark": name, "max_new_tokens": _budget(cfg, name), "conv_template": cfg.conv_template,
              "engine": json.loads(canonical(engine))}
    external = {"model": _files_id(model), "data": _data_id(cfg, name)}
    record = {"config": config, "upstream": {}, "version": VERSION, "external": {"model": str(model)}}
    return stage_key("answers", config, {}, VERSION, external), record


def _requests(name: str, questions: list, build, images: Path) -> list[dict]:
    """One request per question with an image; MMBench's base64 images become files under `images`."""
    rows = []
    for i, q in enumerate(questions):
        if q.image is None:
            continue  # text-only (ScienceQA): see the module docstring
        image = q.image
        if isinstance(image, bytes):
            image = images / name / f"{i}.jpg"
            image.parent.mkdir(parents=True, exist_ok=True)
            image.write_bytes(q.image)
        rows.append({"req_id": f"{name}#{i}", "prompt": build(q.text), "image": str(image), "noise_step": None,
                     "aug_seed": None})
    return rows


def _generate(cfg: EvaluateConfig, model: Path, todo: dict[str, list], work: Path) -> dict[str, list[dict]]:
    """Ask `model` every question of the `todo` benchmarks: one worker per max_new_tokens budget."""
    from seva_tasks.llava.prompts import prompt_builder
    from seva_tasks.stages.generate import GenerateConfig, _run_workers, _write_shards

    build = prompt_builder(cfg.conv_template, model)
    jobs: dict[str, list[dict]] = {}
    for budget in sorted({_budget(cfg, n) for n in todo}):
        engine = {k: getattr(cfg, k) for k in EngineConfig.model_fields}
        gcfg = GenerateConfig.model_validate({**engine, "model": model, "max_new_tokens": budget,
                                              "conv_template": cfg.conv_template, "shard_size": cfg.shard_size,
                                              "gpus": cfg.gpus, "python": cfg.python})
        names = [n for n in todo if _budget(cfg, n) == budget]
        group = []
        for name in names:
            reqs = _requests(name, todo[name], build, work / "images")
            jobs[name] = _write_shards(reqs, work / name, cfg.shard_size)
            group += jobs[name]
        log.info("Asking %s the questions of %s (max_new_tokens %d) in %d shards.", model, ", ".join(names), budget,
                 len(group))
        (work / f"budget-{budget}").mkdir(parents=True, exist_ok=True)
        _run_workers(gcfg, group, False, work / f"budget-{budget}")
    return jobs


def _write_answers(out: Path, name: str, questions: list, jobs: list[dict], label: str) -> dict:
    """LLaVA's answer JSONL from the result shards; failed rows get no line (scored as missing)."""
    import pyarrow.parquet as pq

    res = {r["req_id"]: r for j in jobs for r in pq.read_table(j["results"]).to_pylist()}
    drops: dict[str, int] = {}
    with (out / "answers.jsonl").open("w", encoding="utf-8") as f:
        for i, q in enumerate(questions):
            r = res.get(f"{name}#{i}")
            if r is None or r["error"] is not None:
                reason = "text_only" if r is None else r["error"].split(":")[0]
                drops[reason] = drops.get(reason, 0) + 1
                continue
            f.write(json.dumps({"question_id": q.question_id, "prompt": q.text, "text": r["text"].strip(),
                                "answer_id": r["req_id"], "model_id": label,
                                "metadata": {"finish_reason": r["finish_reason"], "tokens": r["gen_tokens"]}}) + "\n")
    truncated = sum(r["finish_reason"] == "length" for r in res.values() if r["error"] is None)
    return {"questions": len(questions), "answered": len(questions) - sum(drops.values()), "drops": drops,
            "truncated": truncated}


def _answers(store: Store, cfg: EvaluateConfig, label: str, model: Path, questions: dict, work: Path) -> dict:
    """benchmark -> manifest of this model's answers, generating only what the store lacks."""
    keys = {n: _answers_key(cfg, n, model) for n in questions}
    found = {n: m for n, (k, _) in keys.items() if (m := store.manifest("answers", k)) is not None}
    for n in found:
        log.info("Answers of %s on %s didn't change, reusing %s", label, n, store.dir("answers", keys[n][0]))
    todo = {n: questions[n] for n in questions if n not in found}
    jobs = _generate(cfg, model, todo, work / label) if todo else {}
    for n in todo:
        key, record = keys[n]
        found[n] = store.build("answers", key, lambda out, n=n: _write_answers(out, n, todo[n], jobs[n], label),
                               record=record)
    return found


# ---------------------------------------------------------------------------- scores

class _Judges:
    """The judge, started (local vLLM) or connected to on first use, closed at the end."""

    def __init__(self, cfg: EvaluateConfig, base: Path, logs: Path):
        self.cfg, self.base, self.logs = cfg, base, logs
        self.stack, self.judge = contextlib.ExitStack(), None

    def identity(self) -> dict | None:
        """What decides the judge's scores (goes into the score artifacts' keys)."""
        if self.cfg.judge_mode == "off":
            return None
        keep = ("model", "model_version", "runs", "retries", "seed", "review_max_tokens")
        ident = {k: getattr(self.cfg.judge, k) for k in keep} | {"mode": self.cfg.judge_mode}
        if self.cfg.judge_mode == "local":
            ident["files"] = _files_id(resolve(self.cfg.judge_model) if self.cfg.judge_model else self.base)
        return ident

    def get(self) -> Judge:
        if self.judge is None:
            jcfg = self.cfg.judge
            if self.cfg.judge_mode == "local":
                model = resolve(self.cfg.judge_model) if self.cfg.judge_model else self.base
                python = resolve(self.cfg.python or ".venv-vllm/bin/python")
                url = self.stack.enter_context(local_vllm(model, python, self.logs / "judge.log", served_name=jcfg.model,
                                                          max_model_len=self.cfg.max_model_len))
                jcfg = jcfg.model_copy(update={"base_url": url, "model_version": jcfg.model_version or str(model)})
            self.judge = Judge(jcfg)
            self.stack.callback(self.judge.close)
        return self.judge

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stack.close()


def _uses_judge(cfg: EvaluateConfig, name: str) -> bool:
    return B.needs_judge(name) or (name == "mmbench" and cfg.judge_mode != "off")


def _scores_key(cfg: EvaluateConfig, name: str, answers: dict, judge: dict | None) -> tuple[str, dict]:
    config = {"benchmark": name, "judge": judge if _uses_judge(cfg, name) else None}
    upstream = {"answers": {"key": answers["key"], "digest": answers["digest"]}}
    key = stage_key("scores", config, upstream, VERSION, {"data": _data_id(cfg, name)})
    return key, {"config": config, "upstream": upstream, "version": VERSION}


def _scores(store: Store, cfg: EvaluateConfig, name: str, answers: dict, judges: _Judges) -> dict:
    """Manifest of the scores of one answers artifact."""
    uses_judge = _uses_judge(cfg, name)
    key, record = _scores_key(cfg, name, answers, judges.identity())

    def compute(out: Path) -> dict:
        parsed = B.read_answers(store.dir("answers", answers["key"]) / "answers.jsonl")
        scored = B.score_answers(name, _data_dir(cfg, name), parsed, judges.get() if uses_judge else None)
        info = {"judge": judges.get().identity()} if uses_judge else {}
        (out / "scores.json").write_text(json.dumps({"metrics": scored.metrics, "rows": scored.rows, **info}))
        return {"metrics": scored.metrics, **info}

    return store.build("scores", key, compute, record=record)


def _benchmarks(cfg: EvaluateConfig) -> list[str]:
    """The configured benchmarks that can be scored: judged ones are not even asked with the judge off."""
    return [n for n in cfg.benchmarks if not (B.needs_judge(n) and cfg.judge_mode == "off")]


def _questions(cfg: EvaluateConfig) -> dict[str, list]:
    if skipped := [n for n in cfg.benchmarks if n not in _benchmarks(cfg)]:
        log.warning("Skipping %s: they need a judge and evaluate.judge_mode is off.", ", ".join(skipped))
    questions = {}
    for name in _benchmarks(cfg):
        if not _data_dir(cfg, name).is_dir():
            raise InputError(f"{_data_dir(cfg, name)}: no {name} files. Lay them out as LLaVA's playground/data/eval "
                             f"(README 'Benchmark files'), set evaluate.data_root or evaluate.dirs.{name}, or drop it "
                             "from evaluate.benchmarks; then rerun `seva run --until evaluate`.")
        questions[name] = B.load_questions(name, _data_dir(cfg, name))
    return questions


# ---------------------------------------------------------------------------- the base model, on its own

def baseline_key(cfg: EvaluateConfig, model: Path) -> str:
    """Content key of the base model's evaluation: its answers' keys and the judge, never the train stage."""
    answers = {n: _answers_key(cfg, n, model)[0] for n in _benchmarks(cfg)}
    judge = _Judges(cfg, model, Path()).identity()
    return stage_key("baseline", {"answers": answers, "judge": judge, "judge_mode": cfg.judge_mode}, {}, VERSION)


def baseline_done(store: Store, cfg: EvaluateConfig, model: Path) -> bool:
    """Whether every answers and scores artifact of the base model's evaluation is published."""
    judge = _Judges(cfg, model, Path()).identity()
    for name in _benchmarks(cfg):
        answers = store.manifest("answers", _answers_key(cfg, name, model)[0])
        if answers is None or store.manifest("scores", _scores_key(cfg, name, answers, judge)[0]) is None:
            return False
    return True


def baseline(store: Store, cfg: EvaluateConfig, model: Path) -> dict:
    """Answer and score every benchmark with the base model (store artifacts `answers/`, `scores/`).

    The flow runs this as its own task before `evaluate`, keyed by `baseline_key`, so after a
    training change Prefect shows it `Cached`; `evaluate` then finds these artifacts in the store.
    """
    key = baseline_key(cfg, model)
    work = store.root / "answers" / f".baseline-{key}.work"
    answers = _answers(store, cfg, "base", model, _questions(cfg), work)
    with _Judges(cfg, model, work) as judges:
        scores = {n: _scores(store, cfg, n, answers[n], judges) for n in answers}
    shutil.rmtree(work, ignore_errors=True)
    return {"stage": "evaluate-base", "key": key, "model": str(model),
            "answers": {n: m["key"] for n, m in answers.items()},
            "scores": {n: m["key"] for n, m in scores.items()}}


# ---------------------------------------------------------------------------- the stage

def _collect(store: Store, scores: dict[str, dict[str, dict]]) -> tuple[list[dict], dict]:
    """results rows (benchmark, model, per question) and metrics.json's `benchmarks` section."""
    rows, bench = [], {}
    for label, per in scores.items():
        for name, m in per.items():
            data = json.loads((store.dir("scores", m["key"]) / "scores.json").read_text())
            rows += [{"benchmark": name, "model": label, **r} for r in data["rows"]]
            entry = bench.setdefault(name, {"headline": B.get(name).HEADLINE})
            entry[label] = data["metrics"]
            entry.setdefault("judge", data.get("judge"))
    for entry in bench.values():
        h = entry["headline"]
        base, aligned = entry.get("base", {}).get(h), entry.get("aligned", {}).get(h)
        if base is not None and aligned is not None:  # None: nothing could be judged
            entry["delta"] = aligned - base
    return rows, bench


def _write_results(rows: list[dict], path: Path) -> None:
    import polars as pl

    schema = {"benchmark": pl.String, "model": pl.String, "question_id": pl.String, "category": pl.String,
              "answer": pl.String, "parsed": pl.String, "correct": pl.Boolean, "score": pl.Float64}
    pl.DataFrame(rows, schema=schema).write_parquet(path, compression="zstd")


def run(cfg: EvaluateConfig, inputs: dict[str, Path], out_dir: Path) -> dict:
    """Answer, score and compare; write results.parquet, metrics.json, report.md and plots/.

    Args:
        cfg: the stage config. inputs: {"filter": pairs artifact, "train": train artifact (merged/)}.
        out_dir: where to write (the store's resumable partial dir).
    Returns:
        Manifest stats: headline metric per benchmark and model, answers/scores keys, judge, seconds.
    """
    from seva_tasks.benchmarks.report import write_report

    t0 = time.perf_counter()
    train_dir, filter_dir = Path(inputs["train"]), Path(inputs["filter"])
    store = Store(train_dir.parent.parent)  # answers/ and scores/ live beside the stages' artifacts
    models = {"base": _base_model(cfg, train_dir), "aligned": train_dir / "merged"}
    for label, path in models.items():
        if not path.is_dir():
            raise InputError(f"{path}: no {label} model directory. Check evaluate.model / the train artifact.")
    questions = _questions(cfg)
    answers = {label: _answers(store, cfg, label, model, questions, out_dir / WORK) for label, model in models.items()}
    t1 = time.perf_counter()
    with _Judges(cfg, models["base"], out_dir) as judges:
        scores = {label: {n: _scores(store, cfg, n, a[n], judges) for n in a} for label, a in answers.items()}
        judge = judges.judge.identity() if judges.judge else None
    rows, bench = _collect(store, scores)
    _write_results(rows, out_dir / RESULTS)
    metrics = {"models": {k: str(v) for k, v in models.items()}, "judge": judge, "benchmarks": bench,
               "answers": {lb: {n: m["key"] for n, m in a.items()} for lb, a in answers.items()}}
    (out_dir / METRICS).write_text(json.dumps(metrics, indent=1))
    write_report(out_dir, metrics, filter_dir / "pairs.parquet")
    shutil.rmtree(out_dir / WORK, ignore_errors=True)
    for name, e in bench.items():
        log.info("%s %s: base %s → aligned %s (delta %s)", name, e["headline"], e.get("base", {}).get(e["headline"]),
                 e.get("aligned", {}).get(e["headline"]), e.get("delta"))
    return {"headline": {n: {lb: e[lb].get(e["headline"]) for lb in models if lb in e} for n, e in bench.items()},
            "answers": metrics["answers"], "judge": judge, "rows": len(rows),
            "seconds": {"answers": round(t1 - t0, 3), "score_report": round(time.perf_counter() - t1, 3)}}
