"""Benchmark scorers against hand-computed values, each in LLaVA's on-disk layout, plus a toy round trip."""

from __future__ import annotations

import base64
import csv
import json
from pathlib import Path

import pytest

from seva_tasks.benchmarks import (Answer, gqa, load_questions, mmbench, mme, pope, read_answers, score_answers,
                                   score_file, seed, sqa, textvqa, vizwiz)
from seva_tasks.benchmarks.vqa import normalize_answer, vqa_accuracy
from seva_tasks.errors import ConfigError, InputError
from seva_tasks.toy.benchmarks import write_toy_world

SHORT = "\nAnswer the question using a single word or phrase."


def jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def answers(*pairs, prompts=None) -> list[Answer]:
    return [Answer(q, t, None if prompts is None else prompts[i]) for i, (q, t) in enumerate(pairs)]


# ---------------------------------------------------------------------------- answer files

def test_read_answers_names_file_line_and_reason(tmp_path):
    f = tmp_path / "a.jsonl"
    f.write_text('{"question_id": 1, "text": "yes"}\n\n{"question_id": 2, "text": "no"\n')
    with pytest.raises(InputError, match=r"a\.jsonl:3: not valid JSON"):
        read_answers(f)
    f.write_text('{"question_id": 1, "text": "yes"}\n{"question_id": 2}\n')
    with pytest.raises(InputError, match=r"a\.jsonl:2: 'text' must be a string \(missing\)"):
        read_answers(f)
    f.write_text('{"text": "yes"}\n')
    with pytest.raises(InputError, match=r"a\.jsonl:1: missing 'question_id'"):
        read_answers(f)
    f.write_text('[1, 2]\n')
    with pytest.raises(InputError, match=r"a\.jsonl:1: expected a JSON object"):
        read_answers(f)


def test_second_answer_to_a_question_is_an_error(tmp_path):
    d = _pope_dir(tmp_path)
    f = jsonl(tmp_path / "a.jsonl", [{"question_id": 10_000_001, "text": "yes"},
                                     {"question_id": "10000001", "text": "no"}])
    expected = r"a\.jsonl:2: second answer for question_id '10000001' \(first at .*a\.jsonl:1\)"
    with pytest.raises(InputError, match=expected):
        score_file("pope", d, f)


def test_unknown_benchmark_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="Known: pope, mme"):
        score_file("vqav2", tmp_path, tmp_path / "a.jsonl")


# ---------------------------------------------------------------------------- POPE

@pytest.mark.parametrize("text, expected", [
    ("Yes, there is a dog.", "yes"), ("No.", "no"), ("No, there isn't.", "no"), ("There is not a dog", "no"),
    ("Yes. But there is no cat.", "yes"),  # only the first sentence counts
    ("NO", "yes"), ("Nope", "yes"),  # case-sensitive token match, as eval_pope.py
    ("no", "no"), ("I see no dog", "no"),
])
def test_pope_yes_no_rule(text, expected):
    assert pope.yes_no(text) == expected


def _pope_dir(tmp_path: Path) -> Path:
    d = tmp_path / "pope"
    rnd = [("dog", "yes"), ("cat", "yes"), ("car", "no"), ("cup", "no")]
    pop = [("dog", "yes"), ("bus", "no")]
    for split, items in (("random", rnd), ("popular", pop)):
        jsonl(d / "coco" / f"coco_pope_{split}.json",
              [{"question_id": i + 1, "image": "x.jpg", "text": f"Is there a {o} in the image?", "label": lab}
               for i, (o, lab) in enumerate(items)])
    llava = [{"question_id": 10_000_001 + i, "image": "x.jpg", "text": f"Is there a {o} in the image?{SHORT}",
              "category": "random"} for i, (o, _) in enumerate(rnd)]
    llava += [{"question_id": 20_000_001 + i, "image": "x.jpg", "text": f"Is there a {o} in the image?{SHORT}",
               "category": "popular"} for i, (o, _) in enumerate(pop)]
    jsonl(d / "llava_pope_test.jsonl", llava)
    return d


def test_pope_metrics_by_hand(tmp_path):
    d = _pope_dir(tmp_path)
    # random: labels yes yes no no; predictions yes no yes (missing) -> TP 1, FN 1, FP 1, TN 0.
    # popular: labels yes no; predictions yes no -> all right.
    f = jsonl(tmp_path / "a.jsonl", [
        {"question_id": 10_000_001, "text": "Yes"}, {"question_id": 10_000_002, "text": "No, there is not."},
        {"question_id": 10_000_003, "text": "Yes, a car."},
        {"question_id": 20_000_001, "text": "Yes"}, {"question_id": 20_000_002, "text": "No"},
        {"question_id": 999, "text": "Yes"},
    ])
    m = score_file("pope", d, f)
    assert m["benchmark"] == "pope"
    m = m["metrics"]
    assert m["random/accuracy"] == pytest.approx(25.0)  # 1 right of 4 (the missing one is wrong)
    assert m["random/precision"] == pytest.approx(50.0)  # TP 1 / (TP 1 + FP 1)
    assert m["random/recall"] == pytest.approx(50.0)  # TP 1 / (TP 1 + FN 1)
    assert m["random/f1"] == pytest.approx(50.0)
    assert m["random/yes_ratio"] == pytest.approx(50.0)  # 2 predicted yes of 4
    assert m["popular/f1"] == pytest.approx(100.0) and m["popular/yes_ratio"] == pytest.approx(50.0)
    assert "adversarial/f1" not in m
    assert m["f1"] == pytest.approx(75.0) and m["accuracy"] == pytest.approx(62.5)  # means over the 2 splits
    assert (m["missing"], m["unmatched"]) == (1, 1)


def test_pope_auroc_of_p_yes_from_the_first_tokens_alternatives(tmp_path):
    """p(yes) = P(yes) / (P(yes) + P(no)) over the first token's alternatives, "Yes" and " yes" pooled.
    Present: dog 0.8, cat 0.5 (0.3 + 0.2 against 0.5), dog 0.6; absent: car 0.6, cup 0.2, bus 0.5 (neither word
    listed). Of the 9 present/absent pairs, ties counting half: 0.8 wins 3, 0.5 wins 1.5, 0.6 wins 2.5.
    A word missing from the list is bounded by the least listed probability."""
    import math

    d = _pope_dir(tmp_path)
    ln = math.log

    def alts(yes, no):
        return [[" yes", ln(yes)], ["No", ln(no)], ["maybe", ln(0.01)]]

    rows = [(10_000_001, "Yes", alts(0.8, 0.2)), (10_000_002, "Yes", [["Yes", ln(0.3)], ["yes", ln(0.2)], ["no", ln(0.5)]]),
            (10_000_003, "Yes", alts(0.3, 0.2)), (10_000_004, "No", alts(0.1, 0.4)),
            (20_000_001, "Yes", alts(0.3, 0.2)), (20_000_002, "No", [["the", ln(0.9)]])]
    f = jsonl(tmp_path / "a.jsonl", [{"question_id": q, "text": t, "metadata": {"first_token_logprobs": a}} for q, t, a in rows])
    m = score_file("pope", d, f)["metrics"]
    assert m["auroc"] == pytest.approx(100 * (3 + 1.5 + 2.5) / 9)
    assert pope.yes_probability([("no", ln(0.5)), ("the", ln(0.1))]) == pytest.approx(0.1 / 0.6)
    assert pope.yes_probability([("Yes", ln(0.9)), ("the", ln(0.01))]) == pytest.approx(0.9 / 0.91)
    assert pope.yes_probability([]) == 0.5
    plain = jsonl(tmp_path / "b.jsonl", [{"question_id": q, "text": t} for q, t, _ in rows])
    assert "auroc" not in score_file("pope", d, plain)["metrics"]  # LLaVA's answer files carry no alternatives
    bad = jsonl(tmp_path / "c.jsonl", [{"question_id": 10_000_001, "text": "Yes", "metadata": {"first_token_logprobs": {"yes": -1}}}])
    with pytest.raises(InputError, match=r"c.jsonl:1: 'metadata.first_token_logprobs' must be a list"):
        score_file("pope", d, bad)


def test_pope_label_count_mismatch_is_reported(tmp_path):
    d = _pope_dir(tmp_path)
    jsonl(d / "coco" / "coco_pope_popular.json", [{"question_id": 1, "text": "Is there a dog?", "label": "yes"}])
    with pytest.raises(InputError, match="1 labels but 2 'popular' questions"):
        score_answers("pope", d, [])


# ---------------------------------------------------------------------------- MME

@pytest.mark.parametrize("text, expected", [("Yes", "yes"), ("No.", "no"), ("Yes, it is.", "yes"),
                                            ("not really", "no"), ("There is a dog", "other"), ("", "other")])
def test_mme_answer_parsing(text, expected):
    assert mme.parse_pred(text) == expected


def _mme_dir(tmp_path: Path) -> Path:
    d = tmp_path / "MME"
    rel = d / mme.RELEASE
    qa = {
        ("existence", "1"): [("Is there a dog in this image?", "Yes"), ("Is there a cat in this image?", "No")],
        ("existence", "2"): [("Is there a car in this image?", "Yes"), ("Is there a bus in this image?", "No")],
        ("count", "3"): [("Are there two dogs in the image?", "Yes"), ("Are there three dogs in the image?", "No")],
        ("numerical_calculation", "4"): [("Is the answer 5?", "Yes"), ("Is the answer 6?", "No")],
    }
    llava = []
    for (cat, stem), items in qa.items():
        images = cat == "count"  # one subtask in the images/ + questions_answers_YN/ layout
        txt = rel / cat / ("questions_answers_YN" if images else "") / f"{stem}.txt"
        txt.parent.mkdir(parents=True, exist_ok=True)
        if images:
            (rel / cat / "images").mkdir(exist_ok=True)
        # the second existence image uses the double-space variant some MME files have
        sep = "  " if stem == "2" else " "
        txt.write_text("".join(f"{q}{sep}Please answer yes or no.\t{a}\n" for q, a in items))
        qid = f"{cat}/images/{stem}.jpg" if images else f"{cat}/{stem}.jpg"
        llava += [{"question_id": qid, "image": qid, "text": q + SHORT, "category": cat} for q, _ in items]
    jsonl(d / "llava_mme.jsonl", llava)
    return d


def test_mme_acc_plus_per_image_by_hand(tmp_path):
    d = _mme_dir(tmp_path)
    qs = load_questions("mme", d)
    texts = ["Yes", "No",  # existence image 1: both right
             "Yes", "Yes",  # existence image 2: one right
             "yes", "Maybe",  # count: one right, one unparsable ("other")
             "Yes", "No"]  # numerical_calculation: both right
    s = score_answers("mme", d, [Answer(q.question_id, t, q.text) for q, t in zip(qs, texts)])
    m = s.metrics
    assert m["existence"] == pytest.approx(100 * 3 / 4 + 100 * 1 / 2)  # acc 3/4, acc+ 1/2
    assert m["count"] == pytest.approx(100 * 1 / 2 + 0)
    assert m["numerical_calculation"] == pytest.approx(200.0)
    assert m["perception"] == pytest.approx(125 + 50) and m["cognition"] == pytest.approx(200.0)
    assert (m["unparsed"], m["missing"]) == (1, 0)


def test_mme_matches_by_prompt_and_counts_missing(tmp_path):
    d = _mme_dir(tmp_path)
    qs = load_questions("mme", d)
    # answers for image 1 in reverse order: the prompt, not the order, decides which question they answer
    given = [Answer(qs[1].question_id, "No", qs[1].text), Answer(qs[0].question_id, "Yes", qs[0].text)]
    m = score_answers("mme", d, given).metrics
    assert m["existence"] == pytest.approx(100 * 2 / 4 + 100 * 1 / 2)
    assert m["missing"] == 6


# ---------------------------------------------------------------------------- GQA

def test_gqa_exact_match_after_llava_conversion(tmp_path):
    d = tmp_path / "gqa"
    ann = {"1": {"question": "Is it red?", "answer": "yes", "isBalanced": True, "types": {"structural": "verify"}},
           "2": {"question": "What is on it?", "answer": "table", "isBalanced": True, "types": {"structural": "query"}},
           "3": {"question": "Which side?", "answer": "left", "isBalanced": True, "types": {"structural": "query"}},
           "4": {"question": "Which color?", "answer": "red", "isBalanced": False, "types": {"structural": "query"}}}
    (d / "data").mkdir(parents=True)
    (d / gqa.ANNOTATIONS).write_text(json.dumps(ann))
    jsonl(d / gqa.QUESTIONS, [{"question_id": k, "image": "n1.jpg", "text": v["question"] + SHORT}
                              for k, v in ann.items()])
    assert gqa.convert("Yes.") == "yes" and gqa.convert("Left..") == "left" and gqa.convert("A table.") == "a table"
    m = score_answers("gqa", d, answers(("1", "Yes."), ("2", "The table."), ("4", "blue"))).metrics
    assert m["accuracy"] == pytest.approx(100 / 3)  # balanced only: 1 right, "the table" != "table", 3 missing
    assert m["binary"] == pytest.approx(100.0) and m["open"] == pytest.approx(0.0)
    assert m["missing"] == 1


# ---------------------------------------------------------------------------- TextVQA / VizWiz

@pytest.mark.parametrize("raw, expected", [
    ("Two Dogs!", "2 dogs"), ("The Cat's hat.", "cat 's hat"), ("dont", "don't"), ("an apple", "apple"),
    ("10,000", "10000"), ("1.5", "1.5"), ("yes/no", "yes no"), ("ten", "10"),
])
def test_evalai_answer_normalization(raw, expected):
    assert normalize_answer(raw) == expected


def test_vqa_accuracy_leave_one_out():
    gts = ["2"] * 2 + ["3"] * 8
    # pred "2": 2 subsets drop a "2" (1 match left -> 1/3), 8 drop a "3" (2 matches -> 2/3); mean 0.6
    assert vqa_accuracy("2", gts) == pytest.approx(0.6)
    assert vqa_accuracy("two", gts) == pytest.approx(0.6)  # normalized to "2" first
    assert vqa_accuracy("3", gts) == pytest.approx(1.0)  # always >= 3 matches left
    assert vqa_accuracy("red", ["red"] * 3 + ["blue"] * 7) == pytest.approx((3 * 2 / 3 + 7 * 1) / 10)
    assert vqa_accuracy("green", gts) == 0.0


def test_textvqa_matches_questions_on_one_image_by_prompt(tmp_path):
    d = tmp_path / "textvqa"
    d.mkdir()
    data = [{"image_id": "abc", "question": "What brand is this?", "answers": ["2"] * 2 + ["3"] * 8},
            {"image_id": "abc", "question": "What year is it?", "answers": ["1999"] * 10},
            {"image_id": "def", "question": "What does it say?", "answers": ["stop"] * 10}]
    (d / textvqa.ANNOTATIONS).write_text(json.dumps({"data": data}))
    prompts = ["What brand is this?\nReference OCR token: 2, 3" + SHORT, "What year is it?" + SHORT,
               "What does it say?\nReference OCR token: STOP" + SHORT]
    jsonl(d / textvqa.QUESTIONS, [{"question_id": x["image_id"], "image": x["image_id"] + ".jpg", "text": p}
                                  for x, p in zip(data, prompts)])
    assert textvqa.prompt_question(prompts[0]) == "what brand is this?"
    given = answers(("abc", "1999"), ("abc", "two"), prompts=[prompts[1], prompts[0]])
    m = score_answers("textvqa", d, given).metrics
    assert m["accuracy"] == pytest.approx(100 * (0.6 + 1.0 + 0.0) / 3)  # the "def" answer is missing
    assert m["missing"] == 1


def test_vizwiz_val_vqa_accuracy(tmp_path):
    d = tmp_path / "vizwiz"
    d.mkdir()
    val = [{"image": "VizWiz_val_0.jpg", "question": "What is this?", "answer_type": "other",
            "answers": [{"answer": "soup can"}] * 4 + [{"answer": "can"}] * 6},
           {"image": "VizWiz_val_1.jpg", "question": "What color?", "answer_type": "unanswerable",
            "answers": [{"answer": "unanswerable"}] * 10}]
    (d / "val.json").write_text(json.dumps(val))
    qs = load_questions("vizwiz", d)
    assert qs[0].text == ("What is this?\nWhen the provided information is insufficient, respond with "
                          "'Unanswerable'.\nAnswer the question using a single word or phrase.")
    m = score_answers("vizwiz", d, answers((0, "Soup can."), (1, "Unanswerable"))).metrics
    assert m["accuracy"] == pytest.approx(100 * (1.0 + 1.0) / 2)  # 4 "soup can" -> >= 3 left in every subset
    m = score_answers("vizwiz", d, answers((0, "a can"))).metrics
    assert m["accuracy"] == pytest.approx(50.0) and m["type/unanswerable"] == 0.0 and m["missing"] == 1


# ---------------------------------------------------------------------------- ScienceQA / SEED

@pytest.mark.parametrize("text, expected", [
    ("A", "A"), ("B. Because it is.", "B"), ("The answer is C.", "C"),
    ("I think the answer is D.", "FAILED"),  # case-sensitive
    ("So The answer is D. Done", "D"),
    ("The answer is C. The answer is D.", "FAILED"), ("I think A", "FAILED"), ("F", "FAILED"), ("", "FAILED"),
])
def test_sqa_letter_parsing(text, expected):
    assert sqa.parse_letter(text) == expected


def test_sqa_img_accuracy_counts_missing_and_failed(tmp_path):
    d = tmp_path / "scienceqa"
    d.mkdir()
    problems = {"1": {"question": "Q1?", "choices": ["x", "y"], "answer": 0, "hint": "", "image": "image.png"},
                "2": {"question": "Q2?", "choices": ["x", "y"], "answer": 1, "hint": "H", "image": "image.png"},
                "3": {"question": "Q3?", "choices": ["x", "y", "z"], "answer": 2, "hint": "", "image": "image.png"},
                "4": {"question": "Q4?", "choices": ["x", "y"], "answer": 0, "hint": "", "image": None},
                "5": {"question": "Q5?", "choices": ["x", "y"], "answer": 0, "hint": "", "image": "image.png"}}
    (d / "problems.json").write_text(json.dumps(problems))
    (d / "pid_splits.json").write_text(json.dumps({"test": list(problems)}))
    qs = {q.question_id: q for q in load_questions("sqa", d)}  # built from problems.json (no llava_test file)
    assert qs["2"].text == "Context: H\nQ2?\nA. x\nB. y\n" + sqa.OPTION_LETTER
    assert qs["4"].image is None and qs["1"].image == d / "images" / "test" / "1" / "image.png"
    m = score_answers("sqa", d, answers(("1", "A"), ("2", "The answer is B."), ("3", "C is it"), ("4", "A"))).metrics
    assert m["accuracy"] == pytest.approx(50.0)  # image items 1,2,3,5: right, right, FAILED, missing
    assert m["all/accuracy"] == pytest.approx(60.0)
    assert (m["missing"], m["unparsed"], m["text_only"]) == (1, 1, 1)
    # seva asks image questions only: an unanswered text-only question is not "missing" (not SQA-IMG),
    # yet it is still wrong in all/accuracy.
    m = score_answers("sqa", d, answers(("1", "A"), ("2", "B"), ("3", "C"), ("5", "B"))).metrics
    assert (m["accuracy"], m["missing"], m["text_only"]) == (75.0, 0, 1)
    assert m["all/accuracy"] == pytest.approx(60.0)


def test_seed_exact_letter(tmp_path):
    d = tmp_path / "seed_bench"
    d.mkdir()
    qs = [{"question_id": str(100 + i), "question": "How many?", "choice_a": "1", "choice_b": "2", "choice_c": "3",
           "choice_d": "4", "answer": "A", "data_type": "image", "data_id": f"{i}.jpg", "question_type_id": 5}
          for i in range(4)]
    qs.append({**qs[0], "question_id": "900", "data_type": "video"})
    (d / "SEED-Bench.json").write_text(json.dumps({"question_type": {"Instances Counting": 5}, "questions": qs}))
    assert load_questions("seed", d)[0].text == ("How many?\nA. 1\nB. 2\nC. 3\nD. 4\n"
                                                 "Answer with the option's letter from the given choices directly.")
    m = score_answers("seed", d, answers((100, "A"), (101, "A."), (102, " A"), (900, "A"))).metrics
    assert m["accuracy"] == pytest.approx(25.0)  # only the exact "A"; video questions are not SEED-IMG
    assert m["category/Instances Counting"] == pytest.approx(25.0)
    assert (m["missing"], m["unparsed"], m["unmatched"]) == (1, 2, 1)


# ---------------------------------------------------------------------------- MMBench

@pytest.mark.parametrize("text, expected", [
    ("A", "A"), ("(B) cat", "B"), ("B.", "B"), ("A and B", None), ("Cannot determine the answer", "Z"),
    ("the dog", None),
])
def test_mmbench_letter_extraction(text, expected):
    assert mmbench.can_infer_option(text, {"A": "dog", "B": "cat", "C": "cow"}) == expected


def test_mmbench_option_text_extraction():
    choices = {"A": "dog", "B": "cat"}
    assert mmbench.can_infer("I think it is a cat", choices) == "B"
    assert mmbench.can_infer("a cat or a dog", choices) is None
    assert mmbench.can_infer("a Dog", choices) == "A"


def _mmbench_tsv(d: Path, rows: list[dict]) -> None:
    d.mkdir(parents=True, exist_ok=True)
    image = base64.b64encode(b"not really a jpeg").decode()
    with (d / mmbench.TSV).open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=mmbench.COLUMNS, delimiter="\t")
        w.writeheader()
        for r in rows:
            w.writerow({"hint": "nan", "C": "", "D": "", "image": image, "source": "", "l2-category": "",
                        "comment": "", "split": "dev", **r})


def test_mmbench_circular_one_wrong_variant_fails_the_question(tmp_path):
    d = tmp_path / "mmbench"
    _mmbench_tsv(d, [
        {"index": 0, "question": "Animal?", "A": "dog", "B": "cat", "answer": "A", "category": "x"},
        {"index": 1_000_000, "question": "Animal?", "A": "cat", "B": "dog", "answer": "B", "category": "x"},
        {"index": 1, "question": "Color?", "hint": "Look.", "A": "red", "B": "blue", "answer": "B", "category": "y"},
        {"index": 1_000_001, "question": "Color?", "hint": "Look.", "A": "blue", "B": "red", "answer": "A",
         "category": "y"},
    ])
    qs = load_questions("mmbench", d)
    assert qs[2].text == "Look.\nColor?\nA. red\nB. blue\n" + mmbench.OPTION_LETTER
    assert qs[0].text.count("\n") == 3 and isinstance(qs[0].image, bytes)  # options stop at the first empty one
    given = answers((0, "A"), (1_000_000, "The answer is dog"),  # question 0: both variants right (text match)
                    (1, "B"), (1_000_001, "B"))  # question 1: second variant wrong
    s = score_answers("mmbench", d, given)
    assert s.metrics["accuracy"] == pytest.approx(50.0)
    assert s.metrics["category/x"] == 100.0 and s.metrics["category/y"] == 0.0
    assert [r["parsed"] for r in s.rows] == ["A,B", "B,B"]
    m = score_answers("mmbench", d, answers((0, "A"), (1_000_000, "no idea"), (1, "B"))).metrics
    assert (m["accuracy"], m["missing"], m["unparsed"]) == (0.0, 1, 1)


# ---------------------------------------------------------------------------- judge benchmarks need a judge

def test_judge_benchmarks_without_a_judge_say_how_to_pass_one(tmp_path):
    d = tmp_path / "mm-vet"
    d.mkdir()
    (d / "mm-vet.json").write_text(json.dumps({"v1_0": {"imagename": "v1_0.png", "question": "Q", "answer": "A",
                                                        "capability": ["rec"]}}))
    f = jsonl(tmp_path / "a.jsonl", [{"question_id": 0, "text": "A"}])
    with pytest.raises(ConfigError, match="judge.base_url="):
        score_file("mmvet", d, f)


# ---------------------------------------------------------------------------- the toy world round trip

def test_toy_benchmarks_load_and_score_perfect_answers(tmp_path):
    dirs = write_toy_world(tmp_path, seed=1, n_shapes=10, n_signs=4, n_books=2)
    for name, d in dirs.items():
        assert load_questions(name, d), name
    rows = mmbench.read_tsv(dirs["mmbench"] / mmbench.TSV)
    assert score_answers("mmbench", dirs["mmbench"], [Answer(r["index"], r["answer"]) for r in rows]
                         ).metrics["accuracy"] == 100.0
    seed_data = json.loads((dirs["seed"] / "SEED-Bench.json").read_text())
    assert score_answers("seed", dirs["seed"], [Answer(int(q["question_id"]), q["answer"])
                                                for q in seed_data["questions"]]).metrics["accuracy"] == 100.0
    probs = json.loads((dirs["sqa"] / "problems.json").read_text())
    m = score_answers("sqa", dirs["sqa"], [Answer(k, "ABCDE"[v["answer"]]) for k, v in probs.items()]).metrics
    assert m["all/accuracy"] == 100.0
    pq = load_questions("pope", dirs["pope"])
    labels = [json.loads(x)["label"] for s in pope.SPLITS
              for x in (dirs["pope"] / "coco" / f"coco_pope_{s}.json").read_text().splitlines()]
    ordered = [q for s in pope.SPLITS for q in pq if q.category == s]
    m = score_answers("pope", dirs["pope"], [Answer(q.question_id, lab.capitalize()) for q, lab in zip(ordered, labels)]
                      ).metrics
    assert m["f1"] == 100.0 and m["missing"] == 0
    assert (dirs["mme"] / mme.RELEASE / "OCR" / "questions_answers_YN").is_dir()
    assert seed.LETTERS and gqa.QUESTIONS and vizwiz.UNANSWERABLE  # modules export their constants


def test_toy_benchmarks_scale_to_see_a_point(tmp_path):
    """At the sizes the experiment uses (toy.bench_shapes=520 ...), POPE and GQA reach the issue's floors."""
    from seva_tasks.toy import ToyConfig

    big = ToyConfig(bench_shapes=520, bench_signs=64, bench_books=32)
    dirs = write_toy_world(tmp_path, 0, big.bench_shapes, big.bench_signs, big.bench_books)
    pq = load_questions("pope", dirs["pope"])
    assert len(pq) >= 3000 and {q.category for q in pq} == set(pope.SPLITS)
    assert len(load_questions("gqa", dirs["gqa"])) >= 400
    assert len(load_questions("mme", dirs["mme"])) >= 600
