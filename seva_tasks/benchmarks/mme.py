"""MME: 14 yes/no subtasks, two questions per image; score = acc + acc+ per subtask, summed.

Layout (LLaVA `playground/data/eval/MME/`):
    llava_mme.jsonl                      {"question_id": "artwork/images/14777.jpg", "image": same,
                                          "text": q + "\\nAnswer the question using a single word or phrase."}
    MME_Benchmark_release_version/<subtask>/  either images/ + questions_answers_YN/*.txt or
                                          image + .txt side by side; a .txt line is "question\\tYes|No"

    seva score mme --data playground/data/eval/MME --answers answers.jsonl

Ground truth lookup follows `MME/convert_answer_to_mme.py` (eval.zip): the question is the prompt
without the suffix, plus " Please answer yes or no." (or the double-space variant some files use).
Scoring follows `MME/eval_tool/calculation.py`. Deliberate differences: the two questions of an
image are grouped by image rather than by adjacent lines, and a missing answer counts as "other"
(wrong) instead of shifting every later pair.
"""

from __future__ import annotations

import random
from pathlib import Path

from seva_tasks.benchmarks import toyscenes
from seva_tasks.benchmarks.common import (Answer, Question, Scored, pair, read_jsonl,
                                          require, row, write_jsonl)
from seva_tasks.errors import InputError
from seva_tasks.llava.prompts import SHORT_ANSWER

NAME = "mme"
DIR = "MME"
MAX_NEW_TOKENS = 128  # model_vqa_loader.py default
HEADLINE = "perception"  # the number papers report
RELEASE = "MME_Benchmark_release_version"
# calculation.py's eval_type_dict.
PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork",
              "OCR")
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
YES_NO = " Please answer yes or no."


def question_key(prompt: str) -> str:
    """convert_answer_to_mme.py: the prompt without LLaVA's suffix."""
    return prompt.replace(SHORT_ANSWER, "").strip() if SHORT_ANSWER in prompt else prompt


def parse_pred(text: str) -> str:
    """calculation.py parse_pred_ans (on the lower-cased answer): exact yes/no, else the first 4 chars."""
    text = text.lower()
    if text in ("yes", "no"):
        return text
    prefix = text[:4]
    return "yes" if "yes" in prefix else "no" if "no" in prefix else "other"


def load(data_dir: Path) -> list[Question]:
    out = []
    for _, q in read_jsonl(data_dir / "llava_mme.jsonl", "MME questions"):
        qid = q["question_id"]
        out.append(Question(qid, q["text"], data_dir / RELEASE / q["image"], MAX_NEW_TOKENS,
                            q.get("category", qid.split("/")[0]), question_key(q["text"])))
    return out


def _ground_truth(release: Path) -> dict[tuple[str, str, str], str]:
    """convert_answer_to_mme.py get_gt: (subtask, txt file name, question) -> Yes/No."""
    gt = {}
    for cat_dir in sorted(p for p in require(release, "MME release folder").iterdir() if p.is_dir()):
        qa_dir = cat_dir / "questions_answers_YN" if (cat_dir / "images").exists() else cat_dir
        for txt in sorted(qa_dir.glob("*.txt")):
            for lineno, line in enumerate(txt.read_text(encoding="utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                parts = line.strip().split("\t")
                if len(parts) != 2:
                    raise InputError(f"{txt}:{lineno}: expected 'question<TAB>Yes|No', got {line!r}.")
                gt[(cat_dir.name, txt.name, parts[0])] = parts[1]
    return gt


def _gt_for(gt: dict, q: Question) -> str:
    qid = str(q.question_id)
    cat, file = qid.split("/")[0], qid.split("/")[-1].split(".")[0] + ".txt"
    prompt = q.key if YES_NO.strip() in q.key else q.key + YES_NO
    answer = gt.get((cat, file, prompt)) or gt.get((cat, file, prompt.replace(YES_NO, " " + YES_NO)))
    if answer is None:
        raise InputError(f"MME: no ground truth for {qid} {q.key!r} in {RELEASE}/{cat}/.../{file}.")
    return answer.lower()


def score(data_dir: Path, answers: list[Answer], judge=None) -> Scored:
    """Per subtask 100*acc + 100*acc+ (both questions of an image right); `perception`, `cognition` sums."""
    questions = load(data_dir)
    gt = _ground_truth(data_dir / RELEASE)
    paired = pair(questions, answers, question_key)
    metrics: dict[str, float] = {}
    rows, unparsed = [], 0
    for cat in sorted({q.category for q in questions}):
        images: dict[str, list[bool]] = {}
        for q in (q for q in questions if q.category == cat):
            a = paired.get(q)
            pred = "other" if a is None else parse_pred(a.text)
            unparsed += a is not None and pred == "other"
            ok = pred == _gt_for(gt, q)
            images.setdefault(str(q.question_id), []).append(ok)
            rows.append(row(q, a, pred, ok, float(ok)))
        oks = [ok for v in images.values() for ok in v]
        acc = sum(oks) / len(oks)
        acc_plus = sum(all(v) for v in images.values()) / len(images)
        metrics[cat] = 100 * acc + 100 * acc_plus
    metrics["perception"] = sum(metrics.get(c, 0.0) for c in PERCEPTION)
    metrics["cognition"] = sum(metrics.get(c, 0.0) for c in COGNITION)
    metrics["missing"] = paired.missing(questions)
    metrics["unmatched"] = paired.unmatched
    metrics["unparsed"] = unparsed
    return Scored(metrics, rows)


# ---------------------------------------------------------------------------- toy world

def _pairs(scene: dict, vocab: list[str], rng: random.Random) -> dict[str, list[tuple[str, str]]]:
    """Per subtask one true and one false question about the scene (MME's yes/no design)."""
    out: dict[str, list[tuple[str, str]]] = {}
    text = toyscenes.text(scene)
    if text:
        out["OCR"] = [(f'Is the word in the image "{text}"?', "Yes"),
                      (f'Is the word in the image "{text[::-1]}"?', "No")]
    counts = toyscenes.shape_counts(scene)
    if not counts:
        return out
    shape = rng.choice(sorted(counts))
    absent = [s for s in vocab if s not in counts] or ["hexagon"]
    out["existence"] = [(f"Is there a {shape} in this image?", "Yes"),
                        (f"Is there a {rng.choice(absent)} in this image?", "No")]
    n = counts[shape]
    out["count"] = [(f"Are there {n} {toyscenes.plural(shape, n)} in the image?", "Yes"),
                    (f"Are there {n + 1} {toyscenes.plural(shape, n + 1)} in the image?", "No")]
    if n == 1:
        side = toyscenes.position_of(next(o for o in toyscenes.objects(scene) if o["shape"] == shape))
        other = "right" if side == "left" else "left"
        out["position"] = [(f"Is the {shape} on the {side} of the image?", "Yes"),
                           (f"Is the {shape} on the {other} of the image?", "No")]
    colors = toyscenes.colors_of(scene, shape)
    wrong = [c for c in toyscenes.COLORS if c not in colors]
    out["color"] = [(f"Is there a {colors[0]} {shape} in the image?", "Yes"),
                    (f"Is there a {rng.choice(wrong)} {shape} in the image?", "No")]
    return out


def _draw_sum(path: Path, a: int, b: int) -> None:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (224, 224), "white")
    ImageDraw.Draw(img).text((60, 100), f"{a} + {b} =", fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def write_toy(out_dir: Path, scenes: list[dict], rng_seed: int, render: toyscenes.Render) -> None:
    """MME's layouts from toy scenes: OCR uses images/ + questions_answers_YN/, the rest side by side;
    numerical_calculation (cognition) gets its own drawn "a + b =" images."""
    rng = random.Random(rng_seed)
    vocab = sorted({s for sc in scenes for s in toyscenes.object_names(sc)})
    release, llava = out_dir / RELEASE, []

    def add(cat: str, stem: str, src, qas: list[tuple[str, str]]) -> None:
        sub = "images/" if cat == "OCR" else ""
        image = f"{cat}/{sub}{stem}.jpg"
        src(release / image)
        txt = release / cat / ("questions_answers_YN/" if sub else "") / f"{stem}.txt"
        txt.parent.mkdir(parents=True, exist_ok=True)
        txt.write_text("".join(f"{q}{YES_NO}\t{a}\n" for q, a in qas), encoding="utf-8")
        llava.extend({"question_id": image, "image": image, "text": f"{q}\n{SHORT_ANSWER}", "category": cat}
                     for q, _ in qas)

    for i, scene in enumerate(scenes):
        for cat, qas in _pairs(scene, vocab, rng).items():
            add(cat, f"{i:06d}", lambda p, s=scene: toyscenes.save_image(render(s), p), qas)
    for i in range(max(2, len(scenes) // 4)):
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        add("numerical_calculation", f"{i:04d}", lambda p, a=a, b=b: _draw_sum(p, a, b),
            [(f"Is the answer to the arithmetic question in the image {a + b}?", "Yes"),
             (f"Is the answer to the arithmetic question in the image {a + b + 1}?", "No")])
    write_jsonl(out_dir / "llava_mme.jsonl", llava)
