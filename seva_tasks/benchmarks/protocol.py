"""LLaVA-1.5's evaluation protocol, applied to one model: ask every benchmark's questions, score the answers.

    evaluate_model(cfg, model, out_dir, label="base", judge_base=model)
        -> out_dir/answers/<benchmark>.jsonl   LLaVA's answer JSONL (question_id, prompt, text, ...)
           out_dir/scores/<benchmark>.json    {"metrics", "rows"[, "judge"]}

The `baseline` stage runs it on the base model, `evaluate` on the aligned one, both with the
`evaluate:` section of the config (`EvaluateConfig`), so the two are asked exactly alike. Questions are
answered through the engine worker pool (sharded, resumable in `out_dir/_work/`) with LLaVA-1.5's
protocol: vicuna_v1 prompt, greedy, the benchmark's suffix and max_new_tokens (128 for short-answer
sets, 1024 for LLaVA-Bench, MM-Vet, MMBench, SQA). Scoring is LLaVA's rules; MM-Vet and LLaVA-Bench
(and MMBench's fallback extractor) use the judge (benchmarks/judge.py): a `vllm serve` of
`judge_model` on 127.0.0.1 (mode local), an endpoint you run (server), or none (off: those are skipped).

Model families (DESIGN §8): a LLaVA-1.5 model is asked in LLaVA's eval template (`vicuna_v1`); any
other family in its checkpoint's chat template (`conv_template: chat_template`, refused otherwise), as
lmms-eval's Qwen2-VL model asks: the template's default system prompt, one user turn with the image
first, then the question text. The question text is otherwise the same for every family: lmms-eval's default
`post_prompt` of each task, which Qwen2-VL uses (its task YAMLs name no qwen2_vl variant; the
`qwen_vl` ones are the first Qwen-VL's), equals LLaVA-1.5's suffix — POPE, MME, GQA, VQAv2, VizWiz,
TextVQA: "\nAnswer the question using a single word or phrase."; MMBench, SEED, SQA: "\nAnswer with
the option's letter from the given choices directly."; MM-Vet, LLaVA-Bench: the bare question. What
stays LLaVA's: the max_new_tokens budgets (lmms-eval gives MME 16, POPE 128), the scoring rules, and
VizWiz's unanswerable instruction in the question text. One difference is followed: lmms-eval asks
TextVQA without LLaVA's "Reference OCR token:" line (its default `ocr: false`), so chat-template
models are asked without it (`textvqa.chat_text`). Checked against lmms-eval's task YAMLs for POPE,
MME, MMBench and TextVQA; the others use its `default` prompts, assumed equal to LLaVA's suffixes.

Deliberate difference: ScienceQA's text-only questions are not asked (the worker feeds one image per
prompt); SQA-IMG, the reported number, has only image questions.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from seva_tasks import benchmarks as B
from seva_tasks.base import StageConfig, resolve
from seva_tasks.benchmarks.judge import Judge, JudgeConfig, local_vllm
from seva_tasks.engines import EngineConfig
from seva_tasks.errors import InputError
from seva_tasks.family import check_template
from seva_tasks.fingerprint import fingerprint as fingerprint_path
from seva_tasks.llava.prompts import Template
from seva_tasks.store import write_atomic

WORK = "_work"
log = logging.getLogger(__name__)


class EvaluateConfig(StageConfig):
    """Settings of `evaluate` (and `baseline`, which asks the base model the same way).

    Args: see each field's description. Defaults are LLaVA-1.5's evaluation protocol.
    """

    engine: EngineConfig = Field(default_factory=EngineConfig, description="How answers are generated (seva_tasks/engines).")
    max_new_tokens: int | None = Field(None, ge=1, description="Cap on each benchmark's LLaVA budget (128 or 1024); None: LLaVA's own (the toy caps it for speed).")
    conv_template: Template = Field("vicuna_v1", description="Prompt: LLaVA-1.5's eval template 'vicuna_v1' (or 'llava_v1'), or the checkpoint's 'chat_template' (required for non-LLaVA families).")
    benchmarks: list[str] = Field(default_factory=lambda: list(B.BENCHMARKS), description="Benchmarks to run, by `seva score` name.")
    data_root: Path = Field(Path("playground/data/eval"), description="Folder holding each benchmark in LLaVA's layout (pope/, MME/, gqa/, ...).")
    dirs: dict[str, Path] = Field(default_factory=dict, description="Per-benchmark folder overriding data_root/<LLaVA's folder name>.")
    shard_size: int = Field(1024, ge=1, description="Questions per worker shard: the unit of resume.")
    judge_mode: Literal["local", "server", "off"] = Field("local", description="local: serve judge_model with vLLM on 127.0.0.1; server: use judge.base_url; off: skip judged benchmarks.")
    judge_model: Path | None = Field(None, description="Model served as the local judge; None: the base model (weak, but offline).")
    judge: JudgeConfig = Field(default_factory=JudgeConfig, description="Judge endpoint, runs, retries (benchmarks/judge.py).")

    @field_validator("benchmarks")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        unknown = [b for b in v if b not in B.BENCHMARKS]
        if unknown:
            raise ValueError(f"unknown benchmarks {unknown}; choose from: {', '.join(B.BENCHMARKS)}")
        return v


def data_dir(cfg: EvaluateConfig, name: str) -> Path:
    return resolve(cfg.dirs.get(name, Path(cfg.data_root) / B.get(name).DIR))


def benchmarks(cfg: EvaluateConfig) -> list[str]:
    """The configured benchmarks that can be scored: judged ones are not even asked with the judge off."""
    return [n for n in cfg.benchmarks if not (B.needs_judge(n) and cfg.judge_mode == "off")]


def fingerprint(cfg: EvaluateConfig) -> dict:
    """External inputs: each benchmark's annotation files (images are addressed by them and not re-read)
    and the judge model's files; content hashes, memoized."""
    annotations = (".json", ".jsonl", ".tsv", ".txt")
    return {"data": {n: fingerprint_path(data_dir(cfg, n), annotations) for n in benchmarks(cfg)},
            "judge_model": fingerprint_path(resolve(cfg.judge_model)) if cfg.judge_model else None}


def _budget(cfg: EvaluateConfig, name: str) -> int:
    mnt = B.get(name).MAX_NEW_TOKENS
    return min(mnt, cfg.max_new_tokens) if cfg.max_new_tokens else mnt


def questions(cfg: EvaluateConfig) -> dict[str, list]:
    if skipped := [n for n in cfg.benchmarks if n not in benchmarks(cfg)]:
        log.warning("Skipping %s: they need a judge and evaluate.judge_mode is off.", ", ".join(skipped))
    out = {}
    for name in benchmarks(cfg):
        if not data_dir(cfg, name).is_dir():
            raise InputError(f"{data_dir(cfg, name)}: no {name} files. Lay them out as LLaVA's playground/data/eval "
                             f"(README: 'Real weights and data on a GPU box', Benchmarks), set evaluate.data_root or evaluate.dirs.{name}, or drop it "
                             "from evaluate.benchmarks; then rerun `seva run --until evaluate`.")
        out[name] = B.load_questions(name, data_dir(cfg, name))
    return out


# ---------------------------------------------------------------------------- answers

def _requests(name: str, qs: list, build, images: Path, chat: bool) -> list[dict]:
    """One request per question with an image; MMBench's base64 images become files under `images`.
    `chat`: the question text as lmms-eval asks chat-template models, where a benchmark says it differs
    (its `chat_text`: TextVQA without the OCR tokens); the answer file keeps LLaVA's text for pairing."""
    text = getattr(B.get(name), "chat_text", None) if chat else None
    rows = []
    for i, q in enumerate(qs):
        if q.image is None:
            continue  # text-only (ScienceQA): see the module docstring
        image = q.image
        if isinstance(image, bytes):
            image = images / name / f"{i}.jpg"
            image.parent.mkdir(parents=True, exist_ok=True)
            image.write_bytes(q.image)
        rows.append({"req_id": f"{name}#{i}", "prompt": build(text(q.text) if text else q.text), "image": str(image), "noise_step": None,
                     "aug_seed": None})
    return rows


def _generate(cfg: EvaluateConfig, model: Path, todo: dict[str, list], work: Path) -> dict[str, list[dict]]:
    """Ask `model` every question of the `todo` benchmarks: one worker run per max_new_tokens budget."""
    from seva_tasks.engines import pool
    from seva_tasks.llava.prompts import prompt_builder

    check_template(model, cfg.conv_template, "evaluate.conv_template")
    build = prompt_builder(cfg.conv_template, model)
    jobs: dict[str, list[dict]] = {}
    for budget in sorted({_budget(cfg, n) for n in todo}):
        names = [n for n in todo if _budget(cfg, n) == budget]
        group = []
        for name in names:
            jobs[name] = pool.write_shards(_requests(name, todo[name], build, work / "images", cfg.conv_template == "chat_template"),
                                          work / name, cfg.shard_size)
            group += jobs[name]
        log.info("Asking %s the questions of %s (max_new_tokens %d) in %d shards.", model, ", ".join(names), budget,
                 len(group))
        pool.run_workers(cfg.engine, model, budget, group, embeds=False, work=work / f"budget-{budget}",
                         desc=f"answers: {', '.join(names)}")
    return jobs


def _write_answers(path: Path, name: str, qs: list, jobs: list[dict], label: str) -> dict:
    """LLaVA's answer JSONL from the result shards; failed rows get no line (scored as missing)."""
    import pyarrow.parquet as pq

    res = {r["req_id"]: r for j in jobs for r in pq.read_table(j["results"]).to_pylist()}
    drops: dict[str, int] = {}
    lines = []
    for i, q in enumerate(qs):
        r = res.get(f"{name}#{i}")
        if r is None or r["error"] is not None:
            reason = "text_only" if r is None else r["error"].split(":")[0]
            drops[reason] = drops.get(reason, 0) + 1
            continue
        lines.append(json.dumps({"question_id": q.question_id, "prompt": q.text, "text": r["text"].strip(),
                                 "answer_id": r["req_id"], "model_id": label,
                                 "metadata": {"finish_reason": r["finish_reason"], "tokens": r["gen_tokens"],
                                              **_first_token(r)}}) + "\n")
    # Atomic: a file here means this benchmark is answered (what a resumed run skips).
    write_atomic(path, lambda tmp: tmp.write_text("".join(lines), encoding="utf-8"))
    truncated = sum(r["finish_reason"] == "length" for r in res.values() if r["error"] is None)
    return {"questions": len(qs), "answered": len(qs) - sum(drops.values()), "drops": drops, "truncated": truncated}


def _first_token(result: dict) -> dict:
    """The answer's first-token alternatives (`engine.logprobs`), as an answer file keeps them."""
    alts = result.get("first_logprobs")
    return {"first_token_logprobs": [[a["text"], a["logprob"]] for a in alts]} if alts else {}


# ---------------------------------------------------------------------------- scores

class Judges:
    """The judge, started (local vLLM) or connected to on first use, closed at the end."""

    def __init__(self, cfg: EvaluateConfig, base: Path, logs: Path):
        self.cfg, self.base, self.logs = cfg, base, logs
        self.stack, self.judge = contextlib.ExitStack(), None

    def get(self) -> Judge:
        if self.judge is None:
            jcfg = self.cfg.judge
            if self.cfg.judge_mode == "local":
                model = resolve(self.cfg.judge_model) if self.cfg.judge_model else self.base
                python = resolve(self.cfg.engine.python or ".venv-vllm/bin/python")
                url = self.stack.enter_context(local_vllm(model, python, self.logs / "judge.log", served_name=jcfg.model,
                                                          max_model_len=self.cfg.engine.max_model_len))
                jcfg = jcfg.model_copy(update={"base_url": url, "model_version": jcfg.model_version or str(model)})
            self.judge = Judge(jcfg)
            self.stack.callback(self.judge.close)
        return self.judge

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stack.close()


def judge_of(results: dict[str, dict]) -> dict | None:
    """The judge's identity, if any benchmark of `evaluate_model`'s results used one."""
    return next((r["judge"] for r in results.values() if "judge" in r), None)


def _uses_judge(cfg: EvaluateConfig, name: str) -> bool:
    return B.needs_judge(name) or (name == "mmbench" and cfg.judge_mode != "off")


def _score(cfg: EvaluateConfig, name: str, answers: Path, path: Path, judges: Judges) -> dict:
    uses_judge = _uses_judge(cfg, name)
    scored = B.score_answers(name, data_dir(cfg, name), B.read_answers(answers), judges.get() if uses_judge else None)
    info = {"judge": judges.get().identity()} if uses_judge else {}
    path.write_text(json.dumps({"metrics": scored.metrics, "rows": scored.rows, **info}))
    return {"metrics": scored.metrics, **info}


# ---------------------------------------------------------------------------- one model

def evaluate_model(cfg: EvaluateConfig, model: Path, out_dir: Path, *, label: str, judge_base: Path,
                   limit: int | None = None) -> dict:
    """Answer and score every benchmark with `model` into out_dir/answers/ and out_dir/scores/.

    Benchmarks whose answers file already exists in `out_dir` (a resumed attempt) are not asked again.
    `limit` asks only each benchmark's first questions (`seva doctor`'s smoke; the rest score as missing).
    Returns {benchmark: {"answers": counts, "metrics": ..., "judge"?: identity}}.
    """
    if not (model / "config.json").is_file():
        raise InputError(f"{model}: no {label} model (config.json missing). Check `model:` / the train artifact.")
    (out_dir / "answers").mkdir(parents=True, exist_ok=True)
    (out_dir / "scores").mkdir(exist_ok=True)
    qs = {n: q[:limit] for n, q in questions(cfg).items()}
    todo = {n: q for n, q in qs.items() if not (out_dir / "answers" / f"{n}.jsonl").is_file()}
    if done := sorted(set(qs) - set(todo)):
        log.info("Answers of %s on %s already in %s (resumed).", label, ", ".join(done), out_dir)
    work = out_dir / WORK
    jobs = _generate(cfg, model, todo, work) if todo else {}
    counts = {n: _write_answers(out_dir / "answers" / f"{n}.jsonl", n, todo[n], jobs[n], label) for n in todo}
    results: dict[str, dict] = {}
    with Judges(cfg, judge_base, out_dir) as judges:
        for n in qs:
            scored = _score(cfg, n, out_dir / "answers" / f"{n}.jsonl", out_dir / "scores" / f"{n}.json", judges)
            answered = counts.get(n) or {"questions": len(qs[n]), "resumed": True,  # answered by an earlier attempt
                                         "answered": sum(1 for _ in (out_dir / "answers" / f"{n}.jsonl").open())}
            results[n] = {"answers": answered, **scored}
    shutil.rmtree(work, ignore_errors=True)
    return results
