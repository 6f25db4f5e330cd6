"""GQA testdev-balanced: exact match of a short answer.

Layout (LLaVA `playground/data/eval/gqa/`, scripts/v1_5/eval/gqa.sh):
    llava_gqa_testdev_balanced.jsonl           questions + suffix
    data/testdev_balanced_questions.json       official annotations {qid: {answer, isBalanced, types, ...}}
    data/images/

    seva score gqa --data playground/data/eval/gqa --answers answers.jsonl

`scripts/convert_gqa_for_eval.py` turns an answer into `text.rstrip('.').lower()`; the official GQA
`eval.py` then scores `prediction == answer` over balanced questions, and "binary"/"open" by
`types.structural == "query"`. A missing prediction (a KeyError in eval.py) counts as wrong here.
"""

from __future__ import annotations

import random
from pathlib import Path

from seva_tasks.benchmarks import toyscenes
from seva_tasks.benchmarks.common import (Answer, Question, Scored, pair, pct,
                                          read_json, read_jsonl, row, write_json, write_jsonl)
from seva_tasks.llava.prompts import SHORT_ANSWER

NAME = "gqa"
DIR = "gqa"
MAX_NEW_TOKENS = 128  # model_vqa_loader.py default
HEADLINE = "accuracy"  # the number papers report
QUESTIONS = "llava_gqa_testdev_balanced.jsonl"
ANNOTATIONS = "data/testdev_balanced_questions.json"


def convert(text: str) -> str:
    """convert_gqa_for_eval.py."""
    return text.rstrip(".").lower()


def load(data_dir: Path) -> list[Question]:
    return [Question(q["question_id"], q["text"], data_dir / "data" / "images" / q["image"], MAX_NEW_TOKENS,
                     q.get("category", "default"))
            for _, q in read_jsonl(data_dir / QUESTIONS, "GQA questions")]


def score(data_dir: Path, answers: list[Answer], judge=None) -> Scored:
    """`accuracy` over the balanced annotated questions, plus `binary` and `open`."""
    annotations = read_json(data_dir / ANNOTATIONS, "GQA annotations")
    questions = {str(q.question_id): q for q in load(data_dir)}
    paired = pair(list(questions.values()), answers)
    rows, hits = [], {"accuracy": [], "binary": [], "open": []}
    for qid, ann in annotations.items():
        if not ann.get("isBalanced", True):
            continue
        q = questions.get(qid) or Question(qid, ann.get("question", ""), None, MAX_NEW_TOKENS)
        a = paired.get(q)
        pred = None if a is None else convert(a.text)
        ok = pred == ann["answer"]
        hits["accuracy"].append(ok)
        kind = "open" if ann.get("types", {}).get("structural") == "query" else "binary"
        hits[kind].append(ok)
        rows.append(row(q, a, pred, ok, float(ok)))
    metrics = {k: pct(sum(v), len(v)) for k, v in hits.items()}
    metrics["missing"] = sum(r["answer"] is None for r in rows)
    metrics["unmatched"] = paired.unmatched
    return Scored(metrics, rows)


# ---------------------------------------------------------------------------- toy world

def write_toy(out_dir: Path, scenes: list[dict], rng_seed: int, render: toyscenes.Render) -> None:
    """Per scene a colour question (open) and an existence question (binary, "verify")."""
    rng = random.Random(rng_seed)
    vocab = sorted({s for sc in scenes for s in toyscenes.object_names(sc)})
    annotations, llava = {}, []
    for i, scene in enumerate(scenes):
        counts = toyscenes.shape_counts(scene)
        if not counts:
            continue
        image_id = f"n{100000 + i}"
        toyscenes.save_image(render(scene), out_dir / "data" / "images" / f"{image_id}.jpg")
        shape = rng.choice(sorted(counts))
        asked = rng.choice(vocab)
        qas = [(f"What color is the {shape}?", toyscenes.colors_of(scene, shape)[0], "query")]
        if counts[shape] > 1:
            qas = []  # "the <shape>" is ambiguous with several
        qas.append((f"Is there a {asked} in the picture?", "yes" if asked in counts else "no", "verify"))
        for j, (question, answer, structural) in enumerate(qas):
            qid = f"{20000000 + 10 * i + j}"
            annotations[qid] = {"imageId": image_id, "question": question, "answer": answer, "isBalanced": True,
                                "types": {"structural": structural, "semantic": "attr", "detailed": "toy"}}
            llava.append({"question_id": qid, "image": f"{image_id}.jpg", "text": f"{question}\n{SHORT_ANSWER}",
                          "category": "default"})
    write_json(out_dir / ANNOTATIONS, annotations)
    write_jsonl(out_dir / QUESTIONS, llava)
