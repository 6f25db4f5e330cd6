"""LLaVA-Bench (in-the-wild): a judge scores the model's answer against a reference answer.

Layout (LLaVA `playground/data/eval/llava-bench-in-the-wild/`, HF liuhaotian/llava-bench-in-the-wild):
    questions.jsonl      {"image": "001.jpg", "text", "category": "conv|detail|complex", "question_id"}
    context.jsonl        {"image", "caption" (str or list)}
    answers_gpt4.jsonl   reference answers {"question_id", "text"}
    images/

    seva score llava_bench --data playground/data/eval/llava-bench-in-the-wild --answers answers.jsonl judge.model=...

Review prompt and parsing: `llava/eval/eval_gpt_review_bench.py` + `llava/eval/table/rule.json`;
summary: `llava/eval/summarize_gpt_review.py` (relative = mean model score / mean reference score).
Deliberate differences: answers are matched by question_id (LLaVA zips files line by line); a
missing answer is reviewed as an empty answer (counted in `missing`); an unparsable review is a
judge failure left out of the means (LLaVA averages its [-1, -1] in).
"""

from __future__ import annotations

from pathlib import Path

from seva_tasks.benchmarks import toyscenes
from seva_tasks.benchmarks.common import Answer, Question, Scored, pair, read_jsonl, row, write_jsonl
from seva_tasks.errors import ConfigError

NAME = "llava_bench"
DIR = "llava-bench-in-the-wild"
MAX_NEW_TOKENS = 1024  # model_vqa.py hard-codes it
HEADLINE = "relative"  # the number papers report
NEEDS_JUDGE = True


def load(data_dir: Path) -> list[Question]:
    return [Question(q["question_id"], q["text"], data_dir / "images" / q["image"], MAX_NEW_TOKENS, q["category"],
                     q["image"])
            for _, q in read_jsonl(data_dir / "questions.jsonl", "LLaVA-Bench questions")]


def score(data_dir: Path, answers: list[Answer], judge=None) -> Scored:
    """`relative` (percent, mean over runs), `relative_std`, `<category>/relative`, `judge_failures`."""
    from seva_tasks.benchmarks.judge import llava_bench_content, llava_bench_review, llava_bench_summary

    if judge is None:
        raise ConfigError("LLaVA-Bench is reviewed by an LLM judge. Serve one and pass e.g. "
                          "judge.base_url=http://127.0.0.1:8000/v1 judge.model=judge.")
    questions = load(data_dir)
    refs = {str(r["question_id"]): r["text"] for _, r in read_jsonl(data_dir / "answers_gpt4.jsonl", "references")}
    captions = {}
    for _, c in read_jsonl(data_dir / "context.jsonl", "LLaVA-Bench context"):
        captions[c["image"]] = "\n".join(c["caption"]) if isinstance(c["caption"], list) else c["caption"]
    paired = pair(questions, answers)
    runs = judge.cfg.runs
    contents = [llava_bench_content(captions[q.key], q.text, refs[str(q.question_id)],
                                    "" if paired.get(q) is None else paired.get(q).text, q.category)
                for q in questions]
    flat = judge.map(lambda t: llava_bench_review(judge, contents[t[0]], t[1]),
                     [(i, r) for i in range(len(questions)) for r in range(runs)])
    reviews = [flat[i * runs:(i + 1) * runs] for i in range(len(questions))]
    metrics = llava_bench_summary([q.category for q in questions], reviews)
    metrics |= {"missing": paired.missing(questions), "unmatched": paired.unmatched}
    rows = []
    for q, rv in zip(questions, reviews):
        ok = [p[1] for p in rv if p is not None]
        rows.append(row(q, paired.get(q), None, None, sum(ok) / len(ok) if ok else None))
    return Scored(metrics, rows, {"judge": judge.identity()})


# ---------------------------------------------------------------------------- toy world

def write_toy(out_dir: Path, scenes: list[dict], rng_seed: int, render: toyscenes.Render) -> None:
    """Per scene a conv / detail / complex question in turn; the caption is both context and reference."""
    questions, context, refs = [], [], []
    for i, scene in enumerate(scenes):
        image = f"{i + 1:03d}.jpg"
        toyscenes.save_image(render(scene), out_dir / "images" / image)
        cap = toyscenes.caption(scene)
        cat = ("conv", "detail", "complex")[i % 3]
        text = {"conv": "What is shown in this picture?", "detail": "Describe the image in detail.",
                "complex": "What could this picture be used for, and why?"}[cat]
        ref = {"conv": cap, "detail": f"The image shows the following. {cap}",
               "complex": f"{cap} Such a picture could be used to teach shapes, colours or words."}[cat]
        questions.append({"image": image, "text": text, "category": cat, "question_id": i})
        context.append({"id": f"toy_{i}", "image": image, "caption": cap})
        refs.append({"question_id": i, "text": ref, "answer_id": f"ref{i}", "model_id": "reference"})
    write_jsonl(out_dir / "questions.jsonl", questions)
    write_jsonl(out_dir / "context.jsonl", context)
    write_jsonl(out_dir / "answers_gpt4.jsonl", refs)
