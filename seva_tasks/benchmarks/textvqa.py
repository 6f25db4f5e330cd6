"""TextVQA val (with OCR tokens in the prompt, as LLaVA-1.5 reported it): soft VQA accuracy.

Layout (LLaVA `playground/data/eval/textvqa/`, scripts/v1_5/eval/textvqa.sh):
    llava_textvqa_val_v051_ocr.jsonl   {"question_id": image_id, "image": "<id>.jpg", "text":
                                        q + "\\nReference OCR token: A, B, ..." + "\\n" + suffix}
    TextVQA_0.5.1_val.json             {"data": [{image_id, question, answers (10)}]}
    train_images/

    seva score textvqa --data playground/data/eval/textvqa --answers answers.jsonl

Matching and scoring follow `llava/eval/eval_textvqa.py` (an answer's question is recovered from its
prompt; question_id is the image id, shared by the questions on one image) and
`llava/eval/m4c_evaluator.py` (EvalAI normalization, leave-one-out min(1, matches/3)).
Deliberate difference: the mean is over all questions of the question file, so a missing answer
scores 0 (LLaVA averages over the answers present).
"""

from __future__ import annotations

import random
import re
from pathlib import Path

from seva_tasks.benchmarks import toyscenes
from seva_tasks.benchmarks.common import (Answer, Question, Scored, pair, pct,
                                          read_json, read_jsonl, row, write_json, write_jsonl)
from seva_tasks.benchmarks.vqa import normalize_answer, vqa_accuracy
from seva_tasks.errors import InputError
from seva_tasks.llava.prompts import SHORT_ANSWER

NAME = "textvqa"
DIR = "textvqa"
MAX_NEW_TOKENS = 128  # model_vqa_loader.py default
HEADLINE = "accuracy"  # the number papers report
QUESTIONS = "llava_textvqa_val_v051_ocr.jsonl"
ANNOTATIONS = "TextVQA_0.5.1_val.json"


def prompt_question(prompt: str) -> str | None:
    """eval_textvqa.py prompt_processor: the question line of a prompt, lower-cased (None: no match)."""
    lines = prompt.split("\n")
    if prompt.startswith("OCR tokens: "):
        match = re.search(r"Question: (.*?) Short answer:", prompt, re.DOTALL)
        question = match.group(1) if match else None
    elif "Reference OCR token: " in prompt and len(lines) == 3:
        question = lines[1] if prompt.startswith("Reference OCR token:") else lines[0]
    elif len(lines) == 2:
        question = lines[0]
    else:
        question = None  # LLaVA asserts False here
    return None if question is None else question.lower()


def chat_text(text: str) -> str:
    """The question text for a model asked in its chat template: without LLaVA-1.5's OCR-token line,
    as lmms-eval's TextVQA task asks by default (`ocr: false`: question + post_prompt)."""
    return "\n".join(line for line in text.split("\n") if not line.startswith("Reference OCR token:"))


def load(data_dir: Path) -> list[Question]:
    out = []
    for lineno, q in read_jsonl(data_dir / QUESTIONS, "TextVQA questions"):
        key = prompt_question(q["text"])
        if key is None:
            raise InputError(f"{data_dir / QUESTIONS}:{lineno}: cannot find the question line in {q['text']!r}.")
        out.append(Question(q["question_id"], q["text"], data_dir / "train_images" / q["image"], MAX_NEW_TOKENS,
                            q.get("category", ""), key))
    return out


def score(data_dir: Path, answers: list[Answer], judge=None) -> Scored:
    """`accuracy`: mean soft VQA accuracy in percent."""
    gts = {(a["image_id"], a["question"].lower()): a["answers"]
           for a in read_json(data_dir / ANNOTATIONS, "TextVQA annotations")["data"]}
    questions = load(data_dir)
    paired = pair(questions, answers, lambda p: prompt_question(p) or "")
    rows, total = [], 0.0
    for q in questions:
        gt = gts.get((str(q.question_id), q.key))
        if gt is None:
            raise InputError(f"{data_dir / ANNOTATIONS}: no annotation for image {q.question_id} "
                             f"question {q.key!r}.")
        a = paired.get(q)
        s = 0.0 if a is None else vqa_accuracy(a.text, gt)
        total += s
        rows.append(row(q, a, None if a is None else normalize_answer(a.text), s > 0, s))
    return Scored({"accuracy": pct(total, len(questions)), "missing": paired.missing(questions),
                   "unmatched": paired.unmatched}, rows)


# ---------------------------------------------------------------------------- toy world

def _human_answers(truth: str, rng: random.Random) -> list[str]:
    """Ten annotator answers: mostly the truth with case/punctuation noise, a few other readings."""
    variants = [truth, truth.lower(), truth.upper(), f"{truth}.", f"the {truth}"]
    wrong = [truth[:-1] or "x", "unanswerable"]
    n_wrong = rng.randint(0, 3)
    return [rng.choice(variants) for _ in range(10 - n_wrong)] + [rng.choice(wrong) for _ in range(n_wrong)]


def write_toy(out_dir: Path, scenes: list[dict], rng_seed: int, render: toyscenes.Render) -> None:
    """One OCR question per scene with rendered text (LLaVA's OCR-token prompt, tokens = the words)."""
    rng = random.Random(rng_seed)
    data, llava = [], []
    for i, scene in enumerate(scenes):
        text = toyscenes.text(scene)
        if not text:
            continue
        image_id = f"{i:016x}"
        toyscenes.save_image(render(scene), out_dir / "train_images" / f"{image_id}.jpg")
        question = "What is written in the image?"
        data.append({"image_id": image_id, "question_id": len(data), "question": question,
                     "answers": _human_answers(text, rng), "image_classes": [], "set_name": "val"})
        ocr = ", ".join(text.split())
        llava.append({"question_id": image_id, "image": f"{image_id}.jpg",
                      "text": f"{question}\nReference OCR token: {ocr}\n{SHORT_ANSWER}"})
    write_json(out_dir / ANNOTATIONS, {"dataset_type": "val", "dataset_name": "textvqa", "data": data})
    write_jsonl(out_dir / QUESTIONS, llava)
