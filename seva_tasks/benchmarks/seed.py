"""SEED-Bench (image part): four options, exact letter match.

Layout (LLaVA `playground/data/eval/seed_bench/`, scripts/v1_5/eval/seed.sh):
    SEED-Bench.json           {"question_type": {name: id}, "questions": [{question_id, question,
                               choice_a..choice_d, answer, data_type, data_id, question_type_id}]}
    SEED-Bench-image/<data_id>
    llava-seed-bench.jsonl    optional; else built from SEED-Bench.json (image questions) as
                              question + "\\nA. ..\\nB. ..\\nC. ..\\nD. .." + letter suffix

    seva score seed --data playground/data/eval/seed_bench --answers answers.jsonl

Scoring: `scripts/convert_seed_for_submission.py`: correct iff `text == answer` (exact, no
stripping); missing = wrong. `accuracy` is its "image accuracy"; `category/<name>` per question type.
"""

from __future__ import annotations

import random
from pathlib import Path

from seva_tasks.benchmarks import toyscenes
from seva_tasks.benchmarks.common import (Answer, Question, Scored, pair, pct, read_json,
                                          read_jsonl, row, write_json, write_jsonl)
from seva_tasks.llava.prompts import OPTION_LETTER

NAME = "seed"
DIR = "seed_bench"
MAX_NEW_TOKENS = 128  # seed.sh uses model_vqa_loader.py (default 128)
HEADLINE = "accuracy"  # the number papers report
LETTERS = "ABCD"


def prompt(q: dict) -> str:
    options = "".join(f"\n{L}. {q['choice_' + L.lower()]}" for L in LETTERS)
    return f"{q['question']}{options}\n{OPTION_LETTER}"


def load(data_dir: Path) -> list[Question]:
    data = read_json(data_dir / "SEED-Bench.json", "SEED-Bench annotations")
    names = {v: k for k, v in data["question_type"].items()}
    if (data_dir / "llava-seed-bench.jsonl").exists():
        records = [q for _, q in read_jsonl(data_dir / "llava-seed-bench.jsonl", "SEED questions")]
    else:
        records = [{"question_id": q["question_id"], "image": f"SEED-Bench-image/{q['data_id']}", "text": prompt(q),
                    "category": names.get(q["question_type_id"], "")}
                   for q in data["questions"] if q["data_type"] == "image"]
    return [Question(q["question_id"], q["text"], data_dir / q["image"], MAX_NEW_TOKENS, q.get("category", ""))
            for q in records]


def score(data_dir: Path, answers: list[Answer], judge=None) -> Scored:
    """`accuracy` over image questions (SEED-IMG) and `category/<question type>`."""
    data = read_json(data_dir / "SEED-Bench.json", "SEED-Bench annotations")
    names = {v: k for k, v in data["question_type"].items()}
    questions = {str(q.question_id): q for q in load(data_dir)}
    paired = pair(list(questions.values()), answers)
    rows, unparsed = [], 0
    for ann in (q for q in data["questions"] if q["data_type"] == "image"):
        asked = questions.get(str(ann["question_id"]))
        a = None if asked is None else paired.get(asked)
        q = Question(ann["question_id"], ann["question"], None, MAX_NEW_TOKENS, names[ann["question_type_id"]])
        ok = a is not None and a.text == ann["answer"]
        unparsed += a is not None and a.text not in LETTERS
        rows.append(row(q, a, None if a is None else a.text, ok, float(ok)))
    metrics = {"accuracy": pct(sum(r["correct"] for r in rows), len(rows))}
    for cat in sorted({r["category"] for r in rows}):
        hits = [r["correct"] for r in rows if r["category"] == cat]
        metrics[f"category/{cat}"] = pct(sum(hits), len(hits))
    metrics |= {"missing": sum(r["answer"] is None for r in rows), "unmatched": paired.unmatched,
                "unparsed": unparsed}
    return Scored(metrics, rows)


# ---------------------------------------------------------------------------- toy world

def _options(truth: str, pool: list[str], rng: random.Random) -> tuple[list[str], str]:
    others = rng.sample([p for p in pool if p != truth], 3)
    opts = others[:]
    opts.insert(rng.randrange(4), truth)
    return opts, LETTERS[opts.index(truth)]


def write_toy(out_dir: Path, scenes: list[dict], rng_seed: int, render: toyscenes.Render) -> None:
    """Two SEED dimensions on shape scenes: Instances Counting and Instance Attributes (colour)."""
    rng = random.Random(rng_seed)
    types = {"Instance Attributes": 2, "Instances Counting": 5}
    questions, llava = [], []
    for i, scene in enumerate(scenes):
        counts = toyscenes.shape_counts(scene)
        if not counts:
            continue
        data_id = f"{1000000 + i}_{2000000000 + i}.jpg"
        toyscenes.save_image(render(scene), out_dir / "SEED-Bench-image" / data_id)
        shape = rng.choice(sorted(counts))
        if i % 2:
            truth = str(counts[shape])
            opts, ans = _options(truth, [str(n) for n in range(1, 8)], rng)
            qtype, text = "Instances Counting", f"How many {toyscenes.plural(shape, 2)} are in the image?"
        else:
            opts, ans = _options(toyscenes.colors_of(scene, shape)[0], list(toyscenes.COLORS), rng)
            qtype, text = "Instance Attributes", f"What is the color of the {shape}?"
        q = {"question_id": str(100000 + i), "question": text, "answer": ans, "data_type": "image",
             "data_id": data_id, "question_type_id": types[qtype],
             **{f"choice_{L.lower()}": o for L, o in zip(LETTERS, opts)}}
        questions.append(q)
        llava.append({"question_id": int(q["question_id"]), "image": f"SEED-Bench-image/{data_id}",
                      "text": prompt(q), "category": qtype})
    write_json(out_dir / "SEED-Bench.json", {"question_type": types, "questions": questions})
    write_jsonl(out_dir / "llava-seed-bench.jsonl", llava)
