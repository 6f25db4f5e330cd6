"""What every benchmark module shares: question/answer records, strict readers, answer pairing.

An answer file is LLaVA's answer JSONL (`llava/eval/model_vqa*.py` write one object per line:
`question_id`, `text`, `prompt`, `answer_id`, `model_id`, `metadata`); only `question_id` and `text`
are required here, `prompt` is used where LLaVA uses it to tell questions with the same id apart.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seva_tasks.errors import InputError


@dataclass(frozen=True)
class Question:
    """One prompt to generate an answer for, exactly as LLaVA-1.5's eval scripts build it."""

    question_id: int | str  # as in the LLaVA question file; answers echo it back
    text: str  # the user turn after "<image>\n" (suffix included)
    image: Path | bytes | None  # a file, encoded image bytes (MMBench's base64 TSV), or text-only
    max_new_tokens: int  # 128 for model_vqa_loader.py sets, 1024 for model_vqa*.py sets
    category: str = ""
    key: str = ""  # tells apart questions sharing an id (MME: 2 per image; TextVQA: id = image id)


@dataclass(frozen=True)
class Answer:
    """One line of an answer file."""

    question_id: int | str
    text: str
    prompt: str | None = None
    where: str = ""  # "file:line", for error messages
    # metadata.first_token_logprobs: the first token's likeliest alternatives [(text, log-probability)], if the
    # engine kept them (engine.logprobs); POPE reads p(yes) off them
    first_logprobs: list[tuple[str, float]] | None = None


@dataclass
class Scored:
    """A benchmark's metrics (flat names, paper scale) and one row per question."""

    metrics: dict[str, float]
    rows: list[dict]  # question_id, category, answer, parsed, correct, score
    info: dict = field(default_factory=dict)  # e.g. the judge's identity


def row(q: Question, a: Answer | None, parsed: Any, correct: bool | None, score: float | None) -> dict:
    """The per-question record every scorer returns (one schema for results.parquet)."""
    return {
        "question_id": str(q.question_id),
        "category": q.category,
        "answer": None if a is None else a.text,
        "parsed": None if parsed is None else str(parsed),
        "correct": correct,
        "score": score,
    }


def pct(num: float, den: float) -> float:
    """num/den in percent; 0 when there is nothing to divide (an empty split, no predicted yes)."""
    return 100.0 * num / den if den else 0.0


# ---------------------------------------------------------------------------- reading files

def require(path: Path, what: str) -> Path:
    if not path.exists():
        raise InputError(f"{path} not found ({what}). Lay the benchmark out as LLaVA's playground/data/eval/ "
                         "does (README: 'Real weights and data on a GPU box', Benchmarks).")
    return path


def read_json(path: Path, what: str) -> Any:
    require(path, what)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise InputError(f"{path}:{e.lineno}: not valid JSON ({e.msg}).") from e


def read_jsonl(path: Path, what: str) -> list[tuple[int, dict]]:
    """(line number, object) for each non-blank line; a bad line raises naming file and line."""
    require(path, what)
    out = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno}).") from e
            if not isinstance(obj, dict):
                raise InputError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}.")
            out.append((lineno, obj))
    return out


def read_answers(path: Path) -> list[Answer]:
    """Parse an answer JSONL; any malformed line raises InputError with file, line and reason."""
    path = Path(path)
    answers = []
    for lineno, obj in read_jsonl(path, "answer file"):
        where = f"{path}:{lineno}"
        qid = obj.get("question_id")
        if "question_id" not in obj:
            raise InputError(f"{where}: missing 'question_id'. Each line needs "
                             '{"question_id": ..., "text": "..."}.')
        if isinstance(qid, bool) or not isinstance(qid, (int, str)):
            raise InputError(f"{where}: 'question_id' must be an integer or a string, got {qid!r}.")
        if not isinstance(obj.get("text"), str):
            got = "missing" if "text" not in obj else f"got {obj['text']!r}"
            raise InputError(f"{where}: 'text' must be a string ({got}).")
        prompt = obj.get("prompt")
        if prompt is not None and not isinstance(prompt, str):
            raise InputError(f"{where}: 'prompt' must be a string when present, got {prompt!r}.")
        answers.append(Answer(qid, obj["text"], prompt, where, _first_logprobs(obj.get("metadata"), where)))
    return answers


def _first_logprobs(metadata, where: str) -> list[tuple[str, float]] | None:
    alts = metadata.get("first_token_logprobs") if isinstance(metadata, dict) else None
    if alts is None:
        return None
    if not isinstance(alts, list) or not all(isinstance(a, list) and len(a) == 2 and isinstance(a[0], str)
                                             and isinstance(a[1], (int, float)) for a in alts):
        raise InputError(f"{where}: 'metadata.first_token_logprobs' must be a list of [token text, log-probability], "
                         f"got {alts!r}.")
    return [(t, float(lp)) for t, lp in alts]


# ---------------------------------------------------------------------------- pairing

@dataclass
class Paired:
    """Answers matched to questions; what did not match is counted, never dropped silently."""

    by_question: dict[int, Answer]  # id(question) -> answer
    unmatched: int  # answers whose question_id (or prompt) matches no question

    def get(self, q: Question) -> Answer | None:
        return self.by_question.get(id(q))

    def missing(self, questions: list[Question]) -> int:
        return sum(1 for q in questions if id(q) not in self.by_question)


def pair(questions: list[Question], answers: list[Answer], prompt_key=None) -> Paired:
    """Match answers to questions by question_id (compared as strings: SEED's ids are "101669" in the
    annotations but 101669 in the answers). Where several questions share an id, `prompt_key(prompt)`
    must equal `Question.key` (what LLaVA's MME/TextVQA converters do); without a prompt the k-th
    answer for the id takes the k-th question. A second answer to the same question is an error."""
    groups: dict[str, list[Question]] = {}
    for q in questions:
        groups.setdefault(str(q.question_id), []).append(q)
    taken: dict[int, Answer] = {}
    unmatched = 0
    for a in answers:
        group = groups.get(str(a.question_id), [])
        q = _pick(group, a, taken, prompt_key)
        if q is None:
            unmatched += 1
            continue
        if id(q) in taken:
            raise InputError(f"{a.where}: second answer for question_id {a.question_id!r} "
                             f"(first at {taken[id(q)].where}). Keep one answer per question.")
        taken[id(q)] = a
    return Paired(taken, unmatched)


def _pick(group: list[Question], a: Answer, taken: dict[int, Answer], prompt_key) -> Question | None:
    if len(group) <= 1:
        return group[0] if group else None
    if prompt_key is not None and a.prompt is not None:
        key = prompt_key(a.prompt)
        hits = [q for q in group if q.key == key]
        free = [q for q in hits if id(q) not in taken]
        return (free or hits or [None])[0]
    free = [q for q in group if id(q) not in taken]
    return free[0] if free else group[0]


# ---------------------------------------------------------------------------- writing (toy world)

def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1, ensure_ascii=False), encoding="utf-8")
