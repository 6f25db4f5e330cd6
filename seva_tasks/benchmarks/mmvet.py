"""MM-Vet: open answers graded 0-1 by an LLM judge; total and per capability, mean ± std over runs.

Layout (LLaVA `playground/data/eval/mm-vet/`, scripts/v1_5/eval/mmvet.sh):
    mm-vet.json           {"v1_0": {"imagename", "question", "answer" (may hold <AND>/<OR>), "capability": [...]}}
    images/
    llava-mm-vet.jsonl    {"question_id": 0, "image": "v1_0.png", "text": question (no suffix)}; optional

    seva score mmvet --data playground/data/eval/mm-vet --answers answers.jsonl judge.model=...

Answers map to items as `scripts/convert_mmvet_for_eval.py` does (`v1_<question_id>`). Grading is
`mm-vet_evaluator.py` (see seva_tasks/judge.py) with any judge; a missing answer scores 0 without
asking the judge, a judge failure is counted in `judge_failures` and left out of that run's means.
"""

from __future__ import annotations

import random
from pathlib import Path

from seva_tasks.benchmarks import toyscenes
from seva_tasks.benchmarks.common import (Answer, Question, Scored, pair, read_json, read_jsonl, row, write_json,
                                          write_jsonl)
from seva_tasks.errors import ConfigError

NAME = "mmvet"
DIR = "mm-vet"
MAX_NEW_TOKENS = 1024  # model_vqa.py hard-codes it
HEADLINE = "score"  # the number papers report
NEEDS_JUDGE = True


def _items(data_dir: Path) -> dict:
    return read_json(data_dir / "mm-vet.json", "MM-Vet annotations")


def load(data_dir: Path) -> list[Question]:
    items = _items(data_dir)
    if (data_dir / "llava-mm-vet.jsonl").exists():
        records = [q for _, q in read_jsonl(data_dir / "llava-mm-vet.jsonl", "MM-Vet questions")]
    else:
        records = [{"question_id": int(k.split("_")[1]), "image": v["imagename"], "text": v["question"]}
                   for k, v in items.items()]
    caps = {k: ",".join(v["capability"]) for k, v in items.items()}
    return [Question(q["question_id"], q["text"], data_dir / "images" / q["image"], MAX_NEW_TOKENS,
                     caps.get(f"v1_{q['question_id']}", "")) for q in records]


def score(data_dir: Path, answers: list[Answer], judge=None) -> Scored:
    """`score` (percent, mean over judge runs), `score_std`, `cap/<capability>`, `judge_failures`."""
    from seva_tasks.benchmarks.judge import mmvet_grade, mmvet_summary

    if judge is None:
        raise ConfigError("MM-Vet is graded by an LLM judge. Serve one and pass e.g. "
                          "judge.base_url=http://127.0.0.1:8000/v1 judge.model=judge.")
    items = _items(data_dir)
    questions = {f"v1_{q.question_id}": q for q in load(data_dir)}
    paired = pair(list(questions.values()), answers)
    keys = list(items)
    preds = {k: (paired.get(questions[k]) if k in questions else None) for k in keys}
    runs = judge.cfg.runs

    def grade(task: tuple[str, int]) -> float | None:
        k, r = task
        if preds[k] is None:
            return 0.0  # no answer is a wrong answer, not a judge question
        return mmvet_grade(judge, items[k]["question"], items[k]["answer"], preds[k].text, r)

    flat = judge.map(grade, [(k, r) for k in keys for r in range(runs)])
    grades = [flat[i * runs:(i + 1) * runs] for i in range(len(keys))]
    metrics = mmvet_summary([items[k]["capability"] for k in keys], grades)
    metrics |= {"missing": sum(p is None for p in preds.values()), "unmatched": paired.unmatched}
    rows = []
    for k, gs in zip(keys, grades):
        q = questions.get(k) or Question(k, items[k]["question"], None, MAX_NEW_TOKENS)
        ok = [g for g in gs if g is not None]
        rows.append(row(q, preds[k], None, None, sum(ok) / len(ok) if ok else None))
    return Scored(metrics, rows, {"judge": judge.identity()})


# ---------------------------------------------------------------------------- toy world

def write_toy(out_dir: Path, scenes: list[dict], rng_seed: int, render: toyscenes.Render) -> None:
    """Recognition, OCR and counting-with-math items, some with <AND>/<OR> answers."""
    rng = random.Random(rng_seed)
    items, llava = {}, []
    for scene in scenes:
        counts, text = toyscenes.shape_counts(scene), toyscenes.text(scene)
        if text:
            qa = ("What does the text in the image say?", text, ["ocr"])
        elif counts:
            shape = rng.choice(sorted(counts))
            if len(counts) > 1 and rng.random() < 0.5:
                qa = ("Which shapes are in the image?", "<AND>".join(sorted(counts)), ["rec", "spat"])
            else:
                n = counts[shape]
                qa = (f"How many {toyscenes.plural(shape, 2)} are there, plus two?", f"{n + 2}<OR>{n + 2}.0",
                      ["rec", "math"])
        else:
            continue
        k = len(items)
        toyscenes.save_image(render(scene), out_dir / "images" / f"v1_{k}.png")
        items[f"v1_{k}"] = {"imagename": f"v1_{k}.png", "question": qa[0], "answer": qa[1], "capability": qa[2]}
        llava.append({"image": f"v1_{k}.png", "text": qa[0], "category": "conv", "question_id": k})
    write_json(out_dir / "mm-vet.json", items)
    write_jsonl(out_dir / "llava-mm-vet.jsonl", llava)
