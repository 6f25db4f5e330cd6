"""MMBench dev (English): multiple choice with CircularEval.

Layout (LLaVA `playground/data/eval/mmbench/`, scripts/v1_5/eval/mmbench.sh):
    mmbench_dev_20230712.tsv   index, question, hint, A..D, answer, category, image (base64), source,
                               l2-category, comment, split; already holds the circular copies
                               (index k*1,000,000 + original, options rotated)

    seva score mmbench --data playground/data/eval/mmbench --answers answers.jsonl [judge.* ...]

Prompt: `llava/eval/model_vqa_mmbench.py --single-pred-prompt` ([hint + "\\n"] + question +
"\\nA. ..." per option up to the first empty one + letter suffix), max_new_tokens 1024.
Deliberate difference: LLaVA only writes an .xlsx for the OpenCompass server; we score locally as
lmms-eval / VLMEvalKit do: a question counts only if every circular copy is answered right; a
letter is read by `can_infer_option`, then `can_infer_text`, then (only with a judge) the VLMEvalKit
matching prompt. A judge failure leaves the question out (counted), never scores it wrong.
"""

from __future__ import annotations

import base64
import csv
import random
import sys
from pathlib import Path

from seva_tasks.benchmarks import toyscenes
from seva_tasks.benchmarks.common import Answer, Question, Scored, pair, pct, require, row
from seva_tasks.errors import InputError
from seva_tasks.llava.prompts import OPTION_LETTER

NAME = "mmbench"
DIR = "mmbench"
MAX_NEW_TOKENS = 1024  # model_vqa_mmbench.py hard-codes it
HEADLINE = "accuracy"  # the number papers report
TSV = "mmbench_dev_20230712.tsv"
LETTERS = ["A", "B", "C", "D"]  # model_vqa_mmbench.py all_options
CIRCULAR = 1_000_000
# pandas.read_table's default NA strings: LLaVA reads the TSV with pandas, so these cells are NaN.
NA = {"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>", "N/A",
      "NA", "NULL", "NaN", "None", "n/a", "nan", "null"}
COLUMNS = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image", "source", "l2-category",
           "comment", "split"]


def is_none(value: str | None) -> bool:
    """model_vqa_mmbench.py is_none, on cells as pandas would have parsed them."""
    return value is None or value in NA or value.lower() in ("nan", "none")


def read_tsv(path: Path) -> list[dict]:
    require(path, "MMBench TSV")
    csv.field_size_limit(sys.maxsize)  # base64 images exceed csv's 128 KiB default
    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    for i, r in enumerate(rows, 2):
        if not str(r.get("index", "")).isdigit():
            raise InputError(f"{path}:{i}: 'index' must be an integer, got {r.get('index')!r}.")
        r["index"] = int(r["index"])
    return rows


def options(r: dict) -> dict[str, str]:
    """get_options: A, B, ... up to the first empty cell."""
    out = {}
    for letter in LETTERS:
        if is_none(r.get(letter)):
            break
        out[letter] = r[letter]
    return out


def prompt(r: dict) -> str:
    question = r["question"] if is_none(r.get("hint")) else r["hint"] + "\n" + r["question"]
    question += "".join(f"\n{k}. {v}" for k, v in options(r).items())
    return f"{question}\n{OPTION_LETTER}"


def load(data_dir: Path) -> list[Question]:
    return [Question(r["index"], prompt(r), base64.b64decode(r["image"]), MAX_NEW_TOKENS, r.get("category", ""))
            for r in read_tsv(data_dir / TSV)]


# lmms-eval lmms_eval/tasks/mmbench/mmbench_evals.py (= VLMEvalKit matching_util), VERBOSE unset.
REJECT = ("Sorry, I can't help with images of people yet.", "I can't process this file.",
          "I'm sorry, but without the image provided", "Cannot determine the answer")


def can_infer_option(answer: str, choices: dict[str, str]) -> str | None:
    """Exactly one option letter as a token (after '.()[],:;!*#{}' become spaces); refusals are 'Z'."""
    if "Failed to obtain answer via API" in answer:
        return None
    if any(err in answer for err in REJECT):
        return "Z"
    mod = answer
    for c in ".()[],:;!*#{}":
        mod = mod.replace(c, " ")
    splits = [x.strip() for x in mod.split()]
    hits = [c for c in choices if c in splits]
    if len(hits) == 1:
        return hits[0]
    if not hits and "Z" in splits:
        return "Z"
    return None


def can_infer_text(answer: str, choices: dict[str, str]) -> str | None:
    """Exactly one option's text (lower-cased) contained in the answer."""
    answer = answer.lower()
    hits = [k for k, v in choices.items() if str(v).lower() in answer]
    return hits[0] if len(hits) == 1 else None


def can_infer(answer: str, choices: dict[str, str]) -> str | None:
    return can_infer_option(answer, choices) or can_infer_text(answer, choices)


def _judge_extract(judge, r: dict, answer: str) -> str | None:
    """VLMEvalKit extract_answer_from_item: up to 3 asks; None when the judge never gives a usable letter."""
    from seva_tasks.benchmarks.judge import JudgeCallFailed, mmbench_extract_prompt

    content = [{"role": "user", "content": mmbench_extract_prompt(r["question"], options(r), answer)}]
    for _ in range(3):
        try:
            letter = can_infer(judge.chat(content, temperature=0.0, max_tokens=16), options(r))
        except JudgeCallFailed:
            return None
        if letter:
            return letter
    return None  # VLMEvalKit picks a random letter here; we record a judge failure


def score(data_dir: Path, answers: list[Answer], judge=None) -> Scored:
    """`accuracy` (circular) and `category/<name>`; one row per original question."""
    tsv = read_tsv(data_dir / TSV)
    questions = {r["index"]: Question(r["index"], "", None, MAX_NEW_TOKENS, r.get("category", "")) for r in tsv}
    paired = pair(list(questions.values()), answers)
    letters: dict[int, str | None] = {}  # index -> extracted letter; None = unparsed
    pending = []
    for r in tsv:
        a = paired.get(questions[r["index"]])
        letters[r["index"]] = None if a is None else can_infer(a.text, options(r))
        if a is not None and letters[r["index"]] is None and judge is not None:
            pending.append((r, a.text))
    failed: set[int] = set()
    if pending:
        for (r, _), letter in zip(pending, judge.map(lambda p: _judge_extract(judge, *p), pending)):
            letters[r["index"]] = letter
            if letter is None:
                failed.add(r["index"])
    return _circular(tsv, questions, paired, letters, failed, judge is not None)


def _circular(tsv, questions, paired, letters, failed, judged) -> Scored:
    groups: dict[int, list[dict]] = {}
    for r in tsv:
        groups.setdefault(r["index"] % CIRCULAR, []).append(r)
    rows, hits = [], {}
    for g, members in sorted(groups.items()):
        main = questions.get(g, questions[members[0]["index"]])
        if any(m["index"] in failed for m in members):
            rows.append(row(main, paired.get(main), None, None, None))
            continue
        ok = all(letters[m["index"]] == m["answer"] for m in members)
        hits.setdefault(main.category, []).append(ok)
        parsed = ",".join(letters[m["index"]] or "?" for m in members)
        rows.append(row(main, paired.get(main), parsed, ok, float(ok)))
    all_hits = [h for v in hits.values() for h in v]
    metrics = {"accuracy": pct(sum(all_hits), len(all_hits))}
    metrics |= {f"category/{c}": pct(sum(v), len(v)) for c, v in sorted(hits.items())}
    metrics |= {"missing": paired.missing(list(questions.values())), "unmatched": paired.unmatched,
                "unparsed": sum(v is None for i, v in letters.items() if paired.get(questions[i]) is not None)}
    if judged:
        metrics["judge_failures"] = len(failed)
    return Scored(metrics, rows)


# ---------------------------------------------------------------------------- toy world

def write_toy(out_dir: Path, scenes: list[dict], rng_seed: int, render: toyscenes.Render) -> None:
    """Shape questions with 2-4 options, each written once per rotation (the circular copies)."""
    rng = random.Random(rng_seed)
    vocab = sorted({s for sc in scenes for s in toyscenes.object_names(sc)})
    out = []
    for i, scene in enumerate(scenes):
        names = sorted(toyscenes.object_names(scene))
        absent = [s for s in vocab if s not in names]
        if not names or not absent:
            continue
        opts = [rng.choice(names)] + rng.sample(absent, min(len(absent), rng.randint(1, 3)))
        rng.shuffle(opts)
        truth = next(o for o in opts if o in names)
        image = base64.b64encode(toyscenes.jpeg_bytes(render(scene))).decode()
        hint = "Look at the shapes." if i % 3 == 0 else ""
        category = "object_localization" if i % 2 else "image_topic"
        for k in range(len(opts)):  # k-th rotation: options shifted left by k (model_vqa_mmbench.py)
            rot = opts[k:] + opts[:k]
            cells = dict(zip(LETTERS, rot + [""] * (4 - len(rot))))
            out.append({"index": k * CIRCULAR + i, "question": "Which shape is in the image?", "hint": hint,
                        **cells, "answer": LETTERS[rot.index(truth)], "category": category, "image": image,
                        "source": "toy", "l2-category": "perception", "comment": "", "split": "dev"})
    out.sort(key=lambda r: r["index"])
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / TSV).open("w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, delimiter="\t", lineterminator="\n")
        w.writeheader()
        w.writerows(out)
