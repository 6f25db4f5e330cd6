"""POPE (object hallucination): three 3,000-question splits of "Is there a <object> in the image?".

Layout (LLaVA `playground/data/eval/pope/`, docs/Evaluation.md):
    coco/coco_pope_{random,popular,adversarial}.json   labels, JSONL despite the name (AoiDragon/POPE)
    llava_pope_test.jsonl                              questions + suffix, `category` = split
    val2014/                                           COCO images

    seva score pope --data playground/data/eval/pope --answers answers.jsonl

Scoring follows `llava/eval/eval_pope.py`. Deliberate differences: answers are matched to labels by
question_id (LLaVA zips them in file order, which silently misaligns a reordered file), a missing
answer counts as wrong (neither TP nor TN; LLaVA would misalign), and a split with no predicted
"yes" gets precision 0 instead of a ZeroDivisionError. All metrics are percentages.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

from seva_tasks.benchmarks import toyscenes
from seva_tasks.benchmarks.common import (Answer, Question, Scored, pair, pct,
                                          read_jsonl, row, write_jsonl)
from seva_tasks.errors import InputError
from seva_tasks.llava.prompts import SHORT_ANSWER

NAME = "pope"
DIR = "pope"
MAX_NEW_TOKENS = 128  # model_vqa_loader.py default
HEADLINE = "f1"  # the number papers report
SPLITS = ("random", "popular", "adversarial")
# LLaVA's llava_pope_test.jsonl numbers each split from its own offset (seen in the file).
ID_OFFSET = {"adversarial": 0, "random": 10_000_000, "popular": 20_000_000}


def yes_no(text: str) -> str:
    """eval_pope.py: keep the text before the first '.', drop ',', split on ' '; 'No'/'not'/'no' -> no."""
    if text.find(".") != -1:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    return "no" if ("No" in words or "not" in words or "no" in words) else "yes"


def load(data_dir: Path) -> list[Question]:
    """The questions of llava_pope_test.jsonl, in file order."""
    out = []
    for lineno, q in read_jsonl(data_dir / "llava_pope_test.jsonl", "POPE questions"):
        if q.get("category") not in SPLITS:
            raise InputError(f"{data_dir / 'llava_pope_test.jsonl'}:{lineno}: category must be one of "
                             f"{', '.join(SPLITS)}, got {q.get('category')!r}.")
        out.append(Question(q["question_id"], q["text"], data_dir / "val2014" / q["image"], MAX_NEW_TOKENS,
                            q["category"]))
    return out


def _labels(data_dir: Path, questions: list[Question]) -> dict[int, str]:
    """Label per question: the k-th question of a split is the k-th line of coco_pope_<split>.json."""
    labels: dict[int, str] = {}
    for split in SPLITS:
        path = data_dir / "coco" / f"coco_pope_{split}.json"
        qs = [q for q in questions if q.category == split]
        if not path.exists() and not qs:
            continue
        lines = read_jsonl(path, f"POPE {split} labels")
        if len(lines) != len(qs):
            raise InputError(f"{path}: {len(lines)} labels but {len(qs)} '{split}' questions in "
                             "llava_pope_test.jsonl; the two files must describe the same questions.")
        for q, (_, lab) in zip(qs, lines):
            labels[id(q)] = "no" if lab["label"] == "no" else "yes"  # eval_pope.py: anything else is yes
    if not labels:
        raise InputError(f"{data_dir / 'coco'}: no coco_pope_{{random,popular,adversarial}}.json found.")
    return labels


def split_metrics(preds: list[str | None], labels: list[str]) -> dict[str, float]:
    """POPE's official counts, "yes" the positive class: accuracy, precision, recall, F1, yes-ratio (percent)."""
    tp = sum(p == "yes" and g == "yes" for p, g in zip(preds, labels))
    fp = sum(p == "yes" and g == "no" for p, g in zip(preds, labels))
    tn = sum(p == "no" and g == "no" for p, g in zip(preds, labels))
    fn = sum(p != "yes" and g == "yes" for p, g in zip(preds, labels))  # a missing answer is a miss
    precision, recall = pct(tp, tp + fp), pct(tp, tp + fn)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"accuracy": pct(tp + tn, len(labels)), "precision": precision, "recall": recall, "f1": f1,
            "yes_ratio": pct(preds.count("yes"), len(labels))}


def auroc(scores: list[float], labels: list[bool]) -> float | None:
    """Area under the ROC curve (Mann-Whitney, ties count half); None without both classes."""
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    if not pos or not neg:
        return None
    ranked = sorted((s, i) for i, s in enumerate(pos + neg))
    ranks = [0.0] * len(ranked)
    i = 0
    while i < len(ranked):  # average ranks over ties
        j = i
        while j + 1 < len(ranked) and ranked[j + 1][0] == ranked[i][0]:
            j += 1
        for k in range(i, j + 1):
            ranks[ranked[k][1]] = (i + j) / 2 + 1
        i = j + 1
    rank_sum = sum(ranks[: len(pos)])
    return (rank_sum - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg))


def yes_probability(alternatives: list[tuple[str, float]]) -> float:
    """p(yes) / (p(yes) + p(no)) of the first answer token, from its top-k alternatives ("Yes" and " yes" count as
    yes). A word not among them gets the least listed probability, its upper bound, so that a model sure of one
    word still ranks by how sure; 0.5 when neither word is listed."""
    if not alternatives:
        return 0.5
    mass = {"yes": 0.0, "no": 0.0}
    for text, logprob in alternatives:
        if (word := text.strip().lower()) in mass:
            mass[word] += math.exp(logprob)
    floor = math.exp(min(lp for _, lp in alternatives))
    yes, no = mass["yes"] or floor, mass["no"] or floor
    return yes / (yes + no)


def score(data_dir: Path, answers: list[Answer], judge=None) -> Scored:
    """Per split accuracy/precision/recall/F1/yes-ratio, `f1` and `accuracy` averaged over the splits, and `auroc` of
    p(yes) over all of them when the answers carry first-token log-probabilities."""
    questions = load(data_dir)
    labels = _labels(data_dir, questions)
    paired = pair(questions, answers)
    metrics: dict[str, float] = {}
    rows, answered = [], []
    for split in SPLITS:
        qs = [q for q in questions if q.category == split and id(q) in labels]
        if not qs:
            continue
        preds = [None if paired.get(q) is None else yes_no(paired.get(q).text) for q in qs]
        golds = [labels[id(q)] for q in qs]
        for k, v in split_metrics(preds, golds).items():
            metrics[f"{split}/{k}"] = v
        rows += [row(q, paired.get(q), p, p == g, float(p == g)) for q, p, g in zip(qs, preds, golds)]
        answered += [(paired.get(q), g) for q, g in zip(qs, golds) if paired.get(q) is not None]
    present = [s for s in SPLITS if f"{s}/f1" in metrics]
    metrics["f1"] = sum(metrics[f"{s}/f1"] for s in present) / len(present)
    metrics["accuracy"] = sum(metrics[f"{s}/accuracy"] for s in present) / len(present)
    # Beyond LLaVA's metrics, when every answer kept its first token's alternatives (engine.logprobs): how well p(yes)
    # separates present from absent objects over the splits, which a shifted yes/no prior alone does not move.
    if answered and all(a.first_logprobs is not None for a, _ in answered):
        area = auroc([yes_probability(a.first_logprobs) for a, _ in answered], [g == "yes" for _, g in answered])
        if area is not None:
            metrics["auroc"] = 100 * area
    metrics["missing"] = paired.missing(questions)
    metrics["unmatched"] = paired.unmatched
    return Scored(metrics, rows)


# ---------------------------------------------------------------------------- toy world

def _negatives(split: str, present: set[str], vocab: list[str], freq: dict[str, int],
               cooc: dict[str, dict[str, int]], rng: random.Random) -> list[str]:
    """Absent objects in POPE's three orders: random, most frequent overall, most co-occurring."""
    absent = [o for o in vocab if o not in present]
    if split == "random":
        return rng.sample(absent, len(absent))
    if split == "popular":
        return sorted(absent, key=lambda o: (-freq[o], o))
    return sorted(absent, key=lambda o: (-sum(cooc[p].get(o, 0) for p in present), o))


def write_toy(out_dir: Path, scenes: list[dict], rng_seed: int, render: toyscenes.Render, per_image: int = 1) -> None:
    """POPE's files from toy scenes: per image `per_image` present and as many absent objects per split."""
    rng = random.Random(rng_seed)
    objs = [sorted(toyscenes.object_names(s)) for s in scenes]
    vocab = sorted({o for names in objs for o in names})
    freq = {o: sum(o in names for names in objs) for o in vocab}
    cooc = {a: {b: sum(a in n and b in n for n in objs) for b in vocab if b != a} for a in vocab}
    for i, scene in enumerate(scenes):
        toyscenes.save_image(render(scene), out_dir / "val2014" / f"COCO_val2014_{i + 1:012d}.jpg")
    llava, counter = [], dict.fromkeys(SPLITS, 0)
    for split in SPLITS:
        labels = []
        for i, names in enumerate(objs):
            image = f"COCO_val2014_{i + 1:012d}.jpg"
            pos = rng.sample(names, min(per_image, len(names)))
            neg = _negatives(split, set(names), vocab, freq, cooc, rng)[: len(pos)]
            for obj, label in [(o, "yes") for o in pos] + [(o, "no") for o in neg]:
                counter[split] += 1
                text = f"Is there a {obj} in the image?"
                labels.append({"question_id": counter[split], "image": image, "text": text, "label": label})
                llava.append({"question_id": ID_OFFSET[split] + counter[split], "image": image,
                              "text": f"{text}\n{SHORT_ANSWER}", "category": split})
        write_jsonl(out_dir / "coco" / f"coco_pope_{split}.json", labels)
    write_jsonl(out_dir / "llava_pope_test.jsonl", llava)
