"""Stage `sample`: drop reasons, input errors, seeded draws and SeVa's stripping rules, on small fixtures."""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path

import polars as pl
import pytest
from PIL import Image

from seva_tasks.stages import sample
from seva_tasks.errors import InputError
from seva_tasks.stages.sample import OCR_SUFFIX, SampleConfig

OCR_Q = "<image>\nWho wrote this book?\n" + OCR_SUFFIX


def rec(rid, image, *questions, answers=True):
    """A LLaVA-665k record: human/gpt turns for each question."""
    conv = []
    for q in questions:
        conv.append({"from": "human", "value": q})
        if answers:
            conv.append({"from": "gpt", "value": "an answer"})
    return {"id": rid, "image": image, "conversations": conv}


def save(root: Path, rel: str, mode: str = "RGB", size=(24, 16), fmt: str | None = None) -> str:
    """Write a small image of `mode` at root/rel and return rel."""
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    color = {"RGB": (200, 30, 30), "CMYK": (0, 255, 255, 0), "L": 128, "RGBA": (10, 200, 10, 128), "I;16": 40000}[mode]
    Image.new(mode, size, color).save(p, format=fmt)
    return rel


def bomb_png(path: Path, side: int = 40_000) -> None:
    """A tiny PNG whose header claims side×side pixels (PIL refuses it as a decompression bomb)."""
    buf = bytearray()
    Image.new("L", (1, 1)).save(path)
    buf = bytearray(path.read_bytes())
    buf[16:24] = struct.pack(">II", side, side)
    buf[29:33] = struct.pack(">I", zlib.crc32(bytes(buf[12:29])))
    path.write_bytes(bytes(buf))


def write(tmp_path: Path, records, name="mix.json") -> Path:
    p = tmp_path / name
    p.write_text(json.dumps(records))
    return p


def cfg_for(ann: Path, root: Path, **kw) -> SampleConfig:
    kw.setdefault("subsets", {"ocr_vqa": {"images": 1000}, "textvqa": {"images": 1000}})
    return SampleConfig(annotations=ann, image_root=root, **kw)


def run(cfg, tmp_path, name="out") -> tuple[dict, pl.DataFrame]:
    out = tmp_path / name
    out.mkdir()
    stats = sample.run(cfg, {}, out)
    return stats, pl.read_parquet(out / sample.OUTPUT)


@pytest.fixture
def root(tmp_path) -> Path:
    r = tmp_path / "images"
    r.mkdir()
    return r


def test_sample_counts_each_drop_reason(tmp_path, root):
    good = [
        rec("rgb", save(root, "ocr_vqa/images/rgb.jpg"), OCR_Q),
        rec("cmyk", save(root, "ocr_vqa/images/cmyk.jpg", "CMYK"), OCR_Q),
        rec("gray", save(root, "ocr_vqa/images/gray.png", "L"), OCR_Q),
        rec("rgba", save(root, "ocr_vqa/images/rgba.png", "RGBA"), OCR_Q),
        rec("i16", save(root, "textvqa/train_images/i16.png", "I;16"), "<image>\nWhat is written?"),
        rec("inlink", "ocr_vqa/images/inlink.jpg", OCR_Q),  # symlink that stays inside the root
    ]
    os.symlink(root / "ocr_vqa/images/rgb.jpg", root / "ocr_vqa/images/inlink.jpg")
    (root / "ocr_vqa/images/zero.jpg").write_bytes(b"")
    full = (root / "ocr_vqa/images/rgb.jpg").read_bytes()
    (root / "ocr_vqa/images/trunc.jpg").write_bytes(full[: len(full) // 2])
    (root / "ocr_vqa/images/text.jpg").write_text("not an image")
    bomb_png(root / "ocr_vqa/images/bomb.png")
    save(root, "ocr_vqa/images/big.png", size=(200, 200))
    outside = tmp_path / "secret.jpg"
    save(tmp_path, "secret.jpg")
    os.symlink(outside, root / "ocr_vqa/images/escape.jpg")
    bad = [
        5,  # not an object
        {"id": "t", "conversations": [{"from": "human", "value": "text only"}]},  # skipped, not dropped
        {"id": "wt", "image": 7, "conversations": []},
        {"id": "mc", "image": "ocr_vqa/images/rgb.jpg"},
        {"image": "ocr_vqa/images/rgb.jpg", "conversations": []},
        rec(1.5, "ocr_vqa/images/rgb.jpg", OCR_Q),
        {"id": "wv", "image": "ocr_vqa/images/rgb.jpg", "conversations": [{"from": "human", "value": 3}]},
        {"id": "nh", "image": "ocr_vqa/images/rgb.jpg", "conversations": [{"from": "gpt", "value": "hi"}]},
        rec("eq", "ocr_vqa/images/rgb.jpg", "<image>\n" + OCR_SUFFIX),
        rec("abs", str(root / "ocr_vqa/images/rgb.jpg"), OCR_Q),
        rec("dotdot", "ocr_vqa/../../secret.jpg", OCR_Q),
        rec("rgb", "ocr_vqa/images/rgb.jpg", OCR_Q),  # duplicate id
        rec("miss", "ocr_vqa/images/missing.jpg", OCR_Q),
        rec("zero", "ocr_vqa/images/zero.jpg", OCR_Q),
        rec("trunc", "ocr_vqa/images/trunc.jpg", OCR_Q),
        rec("text", "ocr_vqa/images/text.jpg", OCR_Q),
        rec("bomb", "ocr_vqa/images/bomb.png", OCR_Q),
        rec("big", "ocr_vqa/images/big.png", OCR_Q),
        rec("escape", "ocr_vqa/images/escape.jpg", OCR_Q),
        rec("coco", "coco/train2017/x.jpg", "<image>\nWhat?"),  # other subset: skipped
    ]
    stats, df = run(cfg_for(write(tmp_path, good + bad), root, max_image_pixels=20_000), tmp_path)
    assert stats["drops"] == {
        "wrong_type:record": 1,
        "wrong_type:image": 1,
        "missing_field:conversations": 1,
        "missing_field:id": 1,
        "wrong_type:id": 1,
        "wrong_type:conversations[].value": 1,
        "no_human_turn": 1,
        "empty_question": 1,
        "unsafe_image_path": 2,
        "duplicate_id": 1,
        "image_missing": 1,
        "image_undecodable": 3,
        "image_too_large": 2,
        "image_outside_root": 1,
    }
    assert sorted(df["record_id"]) == sorted(r["id"] for r in good)
    assert stats["counts"]["text_only"] == 1 and stats["counts"]["other_subset:coco"] == 1
    assert stats["counts"]["records"] == len(good) + len(bad)
    assert stats["subsets"]["ocr_vqa"]["images"] == 5 and stats["subsets"]["textvqa"]["questions"] == 1


@pytest.mark.parametrize(
    "content, why",
    [
        (b'[{"id": "a", "image": "ocr_vqa/x.jpg", "conversations": [', "not valid JSON"),
        (b'{"id": "a"}', "top level must be a JSON array"),
        (b"", "not valid JSON"),
    ],
)
def test_sample_rejects_unusable_file_naming_it(tmp_path, root, content, why):
    ann = tmp_path / "broken.json"
    ann.write_bytes(content)
    with pytest.raises(InputError, match=why) as e:
        run(cfg_for(ann, root), tmp_path)
    assert "broken.json" in str(e.value)


def test_sample_rejects_missing_file_and_zero_usable_rows(tmp_path, root):
    with pytest.raises(InputError, match="nope.json: cannot read"):
        run(cfg_for(tmp_path / "nope.json", root), tmp_path, "a")
    ann = write(tmp_path, [rec("m", "ocr_vqa/images/missing.jpg", OCR_Q), {"id": "t", "conversations": []}], "empty.json")
    with pytest.raises(InputError, match=r"empty.json: no usable rows.*image_missing"):
        run(cfg_for(ann, root), tmp_path, "b")
    assert not (tmp_path / "b" / sample.OUTPUT).exists()


def many(tmp_path, root, n=40) -> Path:
    recs = [rec(f"o{i}", save(root, f"ocr_vqa/images/{i}.png", "L", (4, 4)), f"<image>\nQ{i}a", f"Q{i}b", f"Q{i}c") for i in range(n)]
    recs += [rec(f"t{i}", save(root, f"textvqa/train_images/{i}.png", "L", (4, 4)), f"<image>\nT{i}") for i in range(n)]
    return write(tmp_path, recs)


def test_sample_draw_is_seeded(tmp_path, root):
    ann = many(tmp_path, root)
    subsets = {"ocr_vqa": {"images": 10, "questions_per_image": 2}, "textvqa": {"images": 5}}
    run(cfg_for(ann, root, subsets=subsets, seed=0), tmp_path, "a")
    run(cfg_for(ann, root, subsets=subsets, seed=0), tmp_path, "b")
    _, c = run(cfg_for(ann, root, subsets=subsets, seed=1), tmp_path, "c")
    a_bytes = (tmp_path / "a" / sample.OUTPUT).read_bytes()
    assert a_bytes == (tmp_path / "b" / sample.OUTPUT).read_bytes()
    a = pl.read_parquet(tmp_path / "a" / sample.OUTPUT)
    assert set(a["record_id"]) != set(c["record_id"])
    assert a.filter(subset="ocr_vqa")["record_id"].n_unique() == 10 and a.filter(subset="ocr_vqa").height == 20
    assert a.filter(subset="textvqa").height == 5
    stats, _ = run(cfg_for(ann, root, subsets=subsets, seed=0), tmp_path, "d")
    assert stats["subsets"]["textvqa"]["examined"] == 5 < stats["subsets"]["textvqa"]["candidates"] == 40  # lazy
    assert a["id"].n_unique() == a.height
    assert (a.group_by("record_id").agg(pl.col("turn").is_sorted())["turn"]).all()  # turns kept in order


def test_sample_order_of_subsets_in_config_does_not_change_bytes(tmp_path, root):
    ann = many(tmp_path, root, 10)
    run(cfg_for(ann, root, subsets={"ocr_vqa": {"images": 3}, "textvqa": {"images": 3}}), tmp_path, "a")
    run(cfg_for(ann, root, subsets={"textvqa": {"images": 3}, "ocr_vqa": {"images": 3}}), tmp_path, "b")
    assert (tmp_path / "a" / sample.OUTPUT).read_bytes() == (tmp_path / "b" / sample.OUTPUT).read_bytes()


def test_sample_applies_seva_strip_rules_per_subset(tmp_path, root):
    recs = [
        rec("o", save(root, "ocr_vqa/images/o.jpg"), OCR_Q, "Is this a novel?\n" + OCR_SUFFIX),
        rec("t", save(root, "textvqa/train_images/t.jpg"), "<image>\nProvide a one-sentence caption.\nReference OCR token: X"),
        rec("c", save(root, "coco/train2017/c.jpg"), "What is this?\n<image>"),
    ]
    subsets = {"ocr_vqa": {"images": 5}, "textvqa": {"images": 5}, "coco": {"images": 5, "strip": ["?"]}}
    _, df = run(cfg_for(write(tmp_path, recs), root, subsets=subsets), tmp_path)
    got = dict(zip(df["id"], df["question"]))
    assert got == {
        "o:0": "Who wrote this book?",  # ocr_vqa: <image>, the suffix and every newline
        "o:1": "Is this a novel?",
        "t:0": "Provide a one-sentence caption.\nReference OCR token: X",  # textvqa: only "<image>\n"
        "c:0": "What is this\n",  # configured rule; a leftover <image> token is always removed
    }
    assert SampleConfig(subsets={"ocr_vqa": {"images": 1}}).subsets["ocr_vqa"].strip == ("<image>", OCR_SUFFIX, "\n")


def test_sample_reports_shortfall(tmp_path, root):
    ann = many(tmp_path, root, 3)
    stats, df = run(cfg_for(ann, root, subsets={"textvqa": {"images": 5}}), tmp_path)
    assert stats["subsets"]["textvqa"] == {"candidates": 3, "examined": 3, "images": 3, "questions": 3, "shortfall": 2}
    assert df.height == 3
    assert stats["counts"]["other_subset:ocr_vqa"] == 3


def test_sample_fingerprint_changes_with_the_file(tmp_path, root):
    ann = write(tmp_path, [rec("a", "ocr_vqa/a.jpg", "q")])
    cfg = cfg_for(ann, root)
    before = sample.fingerprint(cfg)
    assert before == sample.fingerprint(cfg)
    ann.write_text(json.dumps([rec("a", "ocr_vqa/a.jpg", "q2")]))
    os.utime(ann, ns=(1, 1))
    assert sample.fingerprint(cfg) != before
    assert sample.fingerprint(cfg_for(tmp_path / "absent.json", root)) == {"annotations": None}


def test_sample_detects_truncation_inside_the_image_data(tmp_path, root):
    """A JPEG/PNG cut in its compressed data (not its header) is still undecodable, despite draft mode."""
    scene = Image.effect_mandelbrot((300, 200), (-2, -1.5, 1, 1.5), 100).convert("RGB")
    recs = []
    for fmt in ("jpg", "png"):
        scene.save(root / f"full.{fmt}")
        data = (root / f"full.{fmt}").read_bytes()
        (root / "ocr_vqa").mkdir(exist_ok=True)
        (root / f"ocr_vqa/cut.{fmt}").write_bytes(data[: int(len(data) * 0.95)])
        recs.append(rec(f"cut{fmt}", f"ocr_vqa/cut.{fmt}", OCR_Q))
    recs.append(rec("ok", save(root, "ocr_vqa/ok.jpg"), OCR_Q))
    stats, df = run(cfg_for(write(tmp_path, recs), root), tmp_path)
    assert stats["drops"] == {"image_undecodable": 2} and df["record_id"].to_list() == ["ok"]
