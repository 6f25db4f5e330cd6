"""ScienceQA-IMG: multiple choice, answer with the option's letter.

Layout (LLaVA `playground/data/eval/scienceqa/`, scripts/v1_5/eval/sqa.sh):
    llava_test_CQM-A.json    [{"id", "image"?, "conversations": [{"from": "human", "value": "<image>\\n..."}, ...]}]
    problems.json, pid_splits.json    the ScienceQA release (question, choices, answer index, image, hint)
    images/test/<id>/image.png

    seva score sqa --data playground/data/eval/scienceqa --answers answers.jsonl

Prompt: `llava/eval/model_vqa_science.py --single-pred-prompt` (strip "<image>", append the letter
suffix). Scoring: `llava/eval/eval_science_qa.py` (letter alone, "X. ...", exactly one "The answer
is X." match, else FAILED = wrong; missing = wrong). `accuracy` is LLaVA's IMG-Accuracy, the
SQA-IMG number. Deliberate difference: an item is multimodal when it has an image (LLaVA checks
the answer's saved prompt for "<image>", so a *missing* IMG answer silently leaves the denominator).
`missing` counts unanswered image questions only: text-only ones are not part of SQA-IMG (seva does
not ask them, seva_tasks/benchmarks/protocol.py), so `text_only` says how many the split has
instead; unanswered, they still count as wrong in `all/accuracy`.
If llava_test_CQM-A.json is absent it is rebuilt from problems.json in the eval.zip format
("Context: {hint}\\n{question}\\nA. ...", Context line only with a hint).
"""

from __future__ import annotations

import random
import re
from pathlib import Path

from seva_tasks.benchmarks import toyscenes
from seva_tasks.benchmarks.common import (Answer, Question, Scored, pair, pct,
                                          read_json, row, write_json)
from seva_tasks.llava.prompts import OPTION_LETTER

NAME = "sqa"
DIR = "scienceqa"
MAX_NEW_TOKENS = 1024  # model_vqa_science.py hard-codes it
HEADLINE = "accuracy"  # the number papers report
OPTIONS = ["A", "B", "C", "D", "E"]  # eval_science_qa.py --options default
QUESTIONS = "llava_test_CQM-A.json"


def parse_letter(text: str) -> str:
    """eval_science_qa.py: the letter, "X. ..." or exactly one "The answer is X." match; else FAILED."""
    if text in OPTIONS:
        return text
    if len(text) >= 3 and text[0] in OPTIONS and text[1:3] == ". ":
        return text[0]
    found = re.compile(r"The answer is ([A-Z]).").findall(text)
    return found[0] if len(found) == 1 else "FAILED"


def _llava_record(pid: str, prob: dict) -> dict:
    """One llava_test_CQM-A.json record from a ScienceQA problem."""
    lines = ([f"Context: {prob['hint']}"] if prob.get("hint") else []) + [prob["question"]]
    lines += [f"{OPTIONS[i]}. {c}" for i, c in enumerate(prob["choices"])]
    value = "\n".join(lines)
    rec = {"id": pid, "conversations": [{"from": "human", "value": value},
                                        {"from": "gpt", "value": OPTIONS[prob["answer"]]}]}
    if prob.get("image"):
        rec["image"] = f"{pid}/{prob['image']}"
        rec["conversations"][0]["value"] = "<image>\n" + value
    return rec


def load(data_dir: Path) -> list[Question]:
    if (data_dir / QUESTIONS).exists():
        records = read_json(data_dir / QUESTIONS, "ScienceQA questions")
    else:
        problems = read_json(data_dir / "problems.json", "ScienceQA problems")
        records = [_llava_record(pid, problems[pid])
                   for pid in read_json(data_dir / "pid_splits.json", "ScienceQA splits")["test"]]
    out = []
    for rec in records:
        qs = rec["conversations"][0]["value"].replace("<image>", "").strip()
        image = data_dir / "images" / "test" / rec["image"] if "image" in rec else None
        out.append(Question(rec["id"], f"{qs}\n{OPTION_LETTER}", image, MAX_NEW_TOKENS,
                            "image" if image else "text"))
    return out


def score(data_dir: Path, answers: list[Answer], judge=None) -> Scored:
    """`accuracy` over image questions (SQA-IMG), `all/accuracy` over the whole test split."""
    problems = read_json(data_dir / "problems.json", "ScienceQA problems")
    split = read_json(data_dir / "pid_splits.json", "ScienceQA splits")["test"]
    questions = {str(q.question_id): q for q in load(data_dir)}
    paired = pair(list(questions.values()), answers)
    rows, unparsed = [], 0
    for pid in split:
        prob = problems[pid]
        asked = questions.get(pid)
        a = None if asked is None else paired.get(asked)
        q = Question(pid, prob["question"], None, MAX_NEW_TOKENS, "image" if prob.get("image") else "text")
        letter = "FAILED" if a is None else parse_letter(a.text)
        unparsed += a is not None and letter == "FAILED"
        pred_idx = OPTIONS.index(letter) if letter in OPTIONS[: len(prob["choices"])] else -1
        ok = pred_idx == prob["answer"]
        rows.append(row(q, a, letter, ok, float(ok)))
    img = [r for r in rows if r["category"] == "image"]
    return Scored({"accuracy": pct(sum(r["correct"] for r in img), len(img)),
                   "all/accuracy": pct(sum(r["correct"] for r in rows), len(rows)),
                   "missing": sum(r["answer"] is None for r in img), "text_only": len(rows) - len(img),
                   "unmatched": paired.unmatched, "unparsed": unparsed}, rows)


# ---------------------------------------------------------------------------- toy world

def write_toy(out_dir: Path, scenes: list[dict], rng_seed: int, render: toyscenes.Render) -> None:
    """Per scene an image question (which shape is shown) and every third scene a text-only one."""
    rng = random.Random(rng_seed)
    vocab = sorted({s for sc in scenes for s in toyscenes.object_names(sc)})
    problems, test = {}, []
    for i, scene in enumerate(scenes):
        names = sorted(toyscenes.object_names(scene))
        absent = [s for s in vocab if s not in names]
        if names and absent:
            pid = str(2 * i + 1)
            choices = [rng.choice(names)] + rng.sample(absent, min(len(absent), rng.randint(1, 3)))
            rng.shuffle(choices)
            correct = next(c for c in choices if c in names)
            toyscenes.save_image(render(scene), out_dir / "images" / "test" / pid / "image.png")
            problems[pid] = {"question": "Which shape is in the picture?", "choices": choices,
                             "answer": choices.index(correct), "hint": "Look at the picture." if i % 2 else "",
                             "image": "image.png", "subject": "natural science", "split": "test"}
            test.append(pid)
        if i % 3 == 0:
            pid = str(2 * i + 2)
            n = rng.randint(2, 5)
            choices = [str(n + 1), str(n), str(n + 2)]
            problems[pid] = {"question": f"What number comes after {n}?", "choices": choices, "answer": 0,
                             "hint": "", "image": None, "subject": "language science", "split": "test"}
            test.append(pid)
    write_json(out_dir / "problems.json", problems)
    write_json(out_dir / "pid_splits.json", {"test": test, "train": [], "val": []})
    write_json(out_dir / QUESTIONS, [_llava_record(pid, problems[pid]) for pid in test])
