"""P9: POPE's AUROC of p(yes) from the evaluate stage's own answers vs a transformers pass after them (bench/run.py).

Both sides answer the toy world's POPE questions with one vLLM engine (`pool.run_workers`, 16 new tokens, as the
miniature's evaluate stage does) and end with the AUROC. seva: the engine keeps each answer's first-token top 20
(`engine.logprobs: 20`) and `pope.score` reads p(yes) off them. Anchor: the answers without log-probabilities,
then one batched transformers forward pass over the same questions for p(yes) (what `seva experiment` did per
model before: `toy/grounding.py`, removed). Timed: the whole of each side, engine start included. The two AUROCs
are the same number up to float error (tests/test_engines.py checks the log-probabilities themselves).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from common import ROOT, row, summary

BUDGET = 16


def _subject(quick: bool) -> tuple[Path, Path]:
    """(model, POPE dir). Full: the miniature's seed-0 base model (from the store; built if missing, ~10 min) and
    its POPE (~3,300 questions). Quick: the untrained `make run` toy model and its 162 questions (the harness only)."""
    from seva_tasks import pipeline, toy
    from seva_tasks.config import load_config

    if quick:
        toy.ensure(toy.ToyConfig())
        return toy.model_dir(toy.ToyConfig()), toy.root_dir(toy.ToyConfig()) / "eval" / "pope"
    cfg = load_config("toy-miniature", {})
    toy.ensure(cfg.toy)
    refs: dict[str, dict] = {}
    for stage in pipeline.stages_until(cfg, "pretrain"):
        refs[stage] = pipeline.run_stage(cfg, stage, refs)
    return Path(refs["pretrain"]["path"]) / "model", ROOT / cfg.evaluate.data_root / "pope"


def _answers(engine, model: Path, jobs: list[dict], work: Path) -> list[dict]:
    """Answer every shard from scratch; the result rows in request order."""
    import pyarrow.parquet as pq

    from seva_tasks.engines import pool

    shutil.rmtree(work / "results", ignore_errors=True)
    (work / "results").mkdir()
    pool.run_workers(engine, model, BUDGET, jobs, embeds=False, work=work, desc="bench P9")
    return [r for j in jobs for r in pq.read_table(j["results"]).to_pylist()]


def _auroc_from_answers(questions, rows: list[dict], pope_dir: Path) -> float:
    from seva_tasks.benchmarks import pope
    from seva_tasks.benchmarks.common import Answer

    answers = [Answer(q.question_id, r["text"], first_logprobs=[(a["text"], a["logprob"]) for a in r["first_logprobs"]])
               for q, r in zip(questions, rows)]
    return pope.score(pope_dir, answers).metrics["auroc"] / 100


def _auroc_by_transformers(model_dir: Path, questions, pope_dir: Path, batch: int = 32) -> float:
    """The anchor's second pass: p(yes) / (p(yes) + p(no)) of the first answer token, one forward pass a batch."""
    import torch
    from PIL import Image

    from seva_tasks.benchmarks import pope
    from seva_tasks.llava.images import pad_and_resize
    from seva_tasks.llava.prompts import conv_prompt
    from seva_tasks.toy.heldout import load

    model, proc = load(model_dir)
    tok = proc.tokenizer
    tok.padding_side = "left"
    yes, no = (tok.encode(w, add_special_tokens=False)[0] for w in ("yes", "no"))
    size, mean = model.config.vision_config.image_size, proc.image_processor.image_mean
    scores = []
    for i in range(0, len(questions), batch):
        chunk = questions[i:i + batch]
        images = []
        for q in chunk:
            with Image.open(q.image) as im:
                images.append(pad_and_resize(im.convert("RGB"), size, mean))
        enc = proc(images=images, text=[conv_prompt(q.text, "vicuna_v1") for q in chunk], padding=True, return_tensors="pt")
        with torch.inference_mode():
            scores += torch.softmax(model(**enc).logits[:, -1, [yes, no]].float(), -1)[:, 0].tolist()
    labels = pope._labels(pope_dir, questions)
    return pope.auroc(scores, [labels[id(q)] == "yes" for q in questions])


def bench(work: Path, quick: bool, runs: int) -> list[dict]:
    """The P9 row: answers + AUROC, seva (logprobs in the engine) vs anchor (answers, then a transformers pass)."""
    from seva_tasks.benchmarks import pope
    from seva_tasks.engines import EngineConfig, pool
    from seva_tasks.llava.prompts import conv_prompt

    model, pope_dir = _subject(quick)
    questions = pope.load(pope_dir)
    work.mkdir(parents=True, exist_ok=True)
    reqs = [{"req_id": f"pope#{i}", "prompt": conv_prompt(q.text, "vicuna_v1"), "image": str(q.image), "noise_step": None,
             "aug_seed": None} for i, q in enumerate(questions)]
    jobs = pool.write_shards(reqs, work, 256)
    base = {"kind": "vllm", "dtype": "float32", "max_model_len": 512, "kv_cache_memory_bytes": 128 << 20,
            "vllm_args": {"enforce_eager": True} if quick else {}}
    seconds: dict[str, list[float]] = {"seva": [], "anchor": []}
    areas: dict[str, float] = {}
    for i in range(runs):
        for side in (("seva", "anchor") if i % 2 == 0 else ("anchor", "seva")):
            t = time.perf_counter()
            if side == "seva":
                rows = _answers(EngineConfig(**base, logprobs=20), model, jobs, work)
                areas[side] = _auroc_from_answers(questions, rows, pope_dir)
            else:
                _answers(EngineConfig(**base), model, jobs, work)
                areas[side] = _auroc_by_transformers(model, questions, pope_dir)
            seconds[side].append(time.perf_counter() - t)
    world = "the untrained `make run` toy model" if quick else "the miniature's seed-0 base model"
    both = sum(sum(a["text"].strip().lower() in ("yes", "no") for a in r["first_logprobs"]) == 2 for r in rows)
    note = (f"{len(questions)} toy POPE questions, {world}, {BUDGET} new tokens, one vLLM engine per side"
            f"{', eager' if quick else ''}; wall time of the whole side, engine start included. AUROC: seva "
            f"{areas['seva']:.4f}, anchor {areas['anchor']:.4f}; 'yes' and 'no' both among the top 20 for {both} of "
            f"{len(rows)} questions (else the missing word's probability is bounded by the 20th's).")
    return [row("P9", f"POPE answers + AUROC of p(yes), {len(questions)} questions: engine log-probabilities vs a transformers pass",
                "s", summary(seconds["seva"], 2), summary(seconds["anchor"], 2),
                seva_label="vLLM answers with logprobs=20, p(yes) read off them",
                anchor_label="vLLM answers, then a transformers forward pass for p(yes)", target=("ratio<=", 0.75),
                better="lower", note=note)]
