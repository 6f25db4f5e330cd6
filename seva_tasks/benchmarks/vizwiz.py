"""VizWiz-VQA, scored locally on the val split with VQA accuracy.

Deliberate difference from LLaVA: LLaVA-1.5 answers the *test* split and only writes an EvalAI
submission (`scripts/convert_vizwiz_for_submission.py`); test answers are hidden, so no local score
exists. Here the same prompt is asked on `val` and scored with the VQA rule (EvalAI normalization,
leave-one-out min(1, matches/3)), as lmms-eval's `vizwiz_vqa_val` does. Numbers are therefore not
the paper's test-dev numbers; compare base vs aligned.

Layout (LLaVA `playground/data/eval/vizwiz/` plus the val files of the VizWiz Annotations.zip):
    val.json          [{"image": "VizWiz_val_00000000.jpg", "question", "answers": [{"answer", ...}] x10,
                        "answer_type", "answerable"}]
    val/              images
    llava_val.jsonl   optional; built from val.json the way llava_test.jsonl is (question_id = index)

    seva score vizwiz --data playground/data/eval/vizwiz --answers answers.jsonl
"""

from __future__ import annotations

import random
from pathlib import Path

from seva_tasks.benchmarks import toyscenes
from seva_tasks.benchmarks.common import (Answer, Question, Scored, pair, pct,
                                          read_json, read_jsonl, row, write_json, write_jsonl)
from seva_tasks.benchmarks.vqa import normalize_answer, vqa_accuracy
from seva_tasks.llava.prompts import SHORT_ANSWER

NAME = "vizwiz"
DIR = "vizwiz"
MAX_NEW_TOKENS = 128  # model_vqa_loader.py default
HEADLINE = "accuracy"  # the number papers report
# llava_test.jsonl's text: question + this + "\n" + SHORT_ANSWER.
UNANSWERABLE = "When the provided information is insufficient, respond with 'Unanswerable'."


def prompt(question: str) -> str:
    return f"{question}\n{UNANSWERABLE}\n{SHORT_ANSWER}"


def load(data_dir: Path) -> list[Question]:
    """llava_val.jsonl if present, else the same records built from val.json."""
    if (data_dir / "llava_val.jsonl").exists():
        records = [q for _, q in read_jsonl(data_dir / "llava_val.jsonl", "VizWiz questions")]
    else:
        records = [{"question_id": i, "image": v["image"], "text": prompt(v["question"])}
                   for i, v in enumerate(read_json(data_dir / "val.json", "VizWiz val annotations"))]
    return [Question(q["question_id"], q["text"], data_dir / "val" / q["image"], MAX_NEW_TOKENS,
                     q.get("category", ""), q["image"]) for q in records]


def score(data_dir: Path, answers: list[Answer], judge=None) -> Scored:
    """`accuracy` (VQA accuracy, percent) and `type/<answer_type>`."""
    gts = {v["image"]: v for v in read_json(data_dir / "val.json", "VizWiz val annotations")}
    questions = load(data_dir)
    paired = pair(questions, answers)
    rows, by_type = [], {}
    for q in questions:
        ann = gts[q.key]
        a = paired.get(q)
        s = 0.0 if a is None else vqa_accuracy(a.text, [x["answer"] for x in ann["answers"]])
        by_type.setdefault(ann.get("answer_type", "other"), []).append(s)
        rows.append(row(q, a, None if a is None else normalize_answer(a.text), s > 0, s))
    metrics = {"accuracy": pct(sum(r["score"] for r in rows), len(rows))}
    metrics |= {f"type/{t}": pct(sum(v), len(v)) for t, v in sorted(by_type.items())}
    metrics |= {"missing": paired.missing(questions), "unmatched": paired.unmatched}
    return Scored(metrics, rows)


# ---------------------------------------------------------------------------- toy world

def write_toy(out_dir: Path, scenes: list[dict], rng_seed: int, render: toyscenes.Render) -> None:
    """Per scene one counting question (number) and, for every fourth scene, an unanswerable one."""
    rng = random.Random(rng_seed)
    val = []
    for i, scene in enumerate(scenes):
        counts = toyscenes.shape_counts(scene)
        image = f"VizWiz_val_{i:08d}.jpg"
        toyscenes.save_image(render(scene), out_dir / "val" / image)
        if counts and i % 4:
            shape = rng.choice(sorted(counts))
            truth, kind = str(counts[shape]), "number"
            question = f"How many {toyscenes.plural(shape, 2)} are there?"
        else:
            truth, kind, question = "unanswerable", "unanswerable", "What brand is this?"
        answers = [truth] * rng.randint(7, 10)
        answers += ["unsuitable"] * (10 - len(answers))
        val.append({"image": image, "question": question, "answerable": int(kind != "unanswerable"),
                    "answer_type": kind, "answers": [{"answer": x, "answer_confidence": "yes"} for x in answers]})
    write_json(out_dir / "val.json", val)
    write_jsonl(out_dir / "llava_val.jsonl",
                [{"question_id": i, "image": v["image"], "text": prompt(v["question"])} for i, v in enumerate(val)])
