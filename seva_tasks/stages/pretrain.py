"""Stage `pretrain`: instruction-tune the toy world's random tiny LLaVA, so that SeVa has a model to align.

    seva run --until pretrain                            # this stage alone (it has no upstream)
    seva run --until pretrain pretrain.steps=600         # a shorter run (its own cache key)

Toy preset only: real presets start from released weights. The tiny LLaVA of `seva_tasks.toy` has
random weights, so its answers (and SeVa's preference pairs) would be noise. This stage trains every
weight that is not frozen (vision tower, projector, language model) with transformers' `Trainer` and
answer-only cross-entropy on

- the toy `llava_v1_5_mix665k.json` (its `gpt` turns are true by construction), rows of `sources`, and
- `extra` fresh training scenes per source, drawn with `toy.scenes.random_scene` from this stage's own seed
  stream (`Random(f"{seed}:pretrain:{source}")`, never the benchmarks' `"{seed}:benchmarks"`), asked
  the same question templates as the mix (`toy.mix.QAS`), rendered in memory and JPEG-encoded as the
  mix's images are. The 184-row default mix alone is far too little to learn colours and shapes.
- `text` of the `vicuna` stage's text conversations (`toy.lm`, the grid caption where the image goes, fresh
  scenes from `"{seed}:pretrain:lm"`) in this stage's vicuna_v1 format, as LLaVA-1.5 mixes ShareGPT's text into
  instruction tuning: without them, instruction tuning wears down what the vicuna reads in text (held-out text
  0.79 -> 0.71, experiments/miniature session 15), and the image model reads no better than what is left.

LLaVA-1.5 starts from Vicuna and CLIP, and freezes CLIP. The `vicuna` and `tower` stages (when configured)
stand in for them: the last of them is this stage's input model, and `freeze_tower` keeps the tower as the
`tower` stage trained it (`freeze_projector`: its aligned projector too) during instruction tuning.
Without them, this 2-layer LM answers existence questions with the label prior (experiments/miniature/README.md).

Conversations are laid out as LLaVA-1.5 trains them: `<image>` moved to the front of the first human
turn, vicuna_v1 turns "USER: q ASSISTANT: a</s>", loss on each answer and its `</s>` only. Images are
padded to a square with the mean colour and resized, as the engines and SeVa feed them.

After training it asks `heldout` questions (the mix's templates on scenes from a third seed stream,
`"{seed}:pretrain-heldout"`) with greedy decoding and records accuracy per question kind in the
manifest, next to the bar a blind model can reach: always giving the kind's commonest true answer.
Then the gates (`toy.gates`): the same questions on images noised at `noise_step` as SeVa's rejected
side is (the drop), and the world's POPE benchmark (`pope`), clean and noised, scored by POPE's own rule
(F1 and yes-ratio, each the mean of its three splits as POPE reports them), each gate written as
{value, threshold, passed}; `experiment` refuses a base model that fails one.

Output: `out_dir/model/`, a full model directory (the base's config, processor, tokenizer and chat
template, copied; float32 `model.safetensors` with llava-hf names, which transformers and vLLM 0.32
both load), and `metrics.jsonl` (one line per logging step).
"""

from __future__ import annotations

import io
import json
import logging
import math
import random
import time
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator

from seva_tasks.base import resolve
from seva_tasks.errors import InputError
from seva_tasks.fingerprint import fingerprint as fingerprint_path
from seva_tasks.llava.prompts import SHORT_ANSWER, conversation, encode
from seva_tasks.toy import fit, gates, lm, mix, tower
from seva_tasks.toy.heldout import accuracy, answer_matches, ask, heldout, load, majority
from seva_tasks.toy.scenes import random_scene, render

SOURCES = (*mix.PREFIXES, "text")  # "text": rows without an image (ShareGPT-like)
log = logging.getLogger(__name__)


class PretrainConfig(fit.FitConfig):
    """Instruction tuning of the toy LLaVA: data, optimiser (`toy.fit.FitConfig`'s too) and the held-out check.

    Args: see each field's description. The defaults train to well above chance in ~2-3 minutes on
    2 CPU cores (see the manifest's `heldout` and `seconds`).
    """

    annotations: Path = Field(Path("data/toy/llava_v1_5_mix665k.json"), description="The toy LLaVA-665k-style mix whose conversations are trained on.")
    image_root: Path = Field(Path("data/toy/images"), description="Directory the mix's `image` paths are relative to.")
    sources: tuple[str, ...] = Field(SOURCES, description="Mix rows to train on, by image prefix (ocr_vqa, textvqa, coco, gqa, vg) or 'text' for text-only rows.")
    extra: dict[str, int] = Field(
        default_factory=lambda: {"gqa": 4000, "coco": 600, "ocr_vqa": 800, "textvqa": 400},
        description="Fresh training scenes per source (toy templates, this stage's own seed stream) on top of the mix.")
    yes_share: float = Field(mix.YES_SHARE, ge=0, le=1, description="Share of the extra GQA scenes' existence questions that name a present thing (the mix's own: toy.mix.YES_SHARE); above it, a base model that says yes when unsure, as LLaVA does.")
    text: int = Field(0, ge=0, description="Text conversations of the vicuna stage's kind (toy.lm: the grid caption in the image's place, GQA-style and lettered questions) mixed in, in this stage's format, as LLaVA-1.5 mixes ShareGPT's text: they keep the language model's reading from wearing down.")
    steps: int = Field(1000, ge=1, description="Optimizer steps (~0.2 s each on one free core at the default sizes).")
    max_length: int = Field(512, ge=32, description="Conversations longer than this many tokens (image tokens included) are dropped and counted.")
    seed: int = Field(0, description="Seeds the extra scenes, data order and the held-out questions' scenes.")
    heldout: int = Field(640, ge=0, description="Held-out questions asked after training (split evenly over the 8 question types: 80 each, SE <= 0.06 a kind); 0: skip.")
    pope: Path | None = Field(Path("data/toy/eval/pope"), description="The world's POPE benchmark (LLaVA's layout, `<toy.root>/eval/pope`) whose questions, clean and noised, give the POPE gates: LLaVA-1.5's F1 ≈ 86 is POPE's three-split mean, so the gate asks the same questions and scores them by the same rule. None (or heldout 0): no gates.")
    noise_step: int = Field(500, ge=1, le=999, description="Diffusion step of the gates' noised check: keep it at augment.noise_step.")
    freeze_tower: bool = Field(False, description="Keep the vision tower frozen during instruction tuning, as LLaVA-1.5 keeps CLIP: the `tower` stage's, whose output is this stage's input.")
    freeze_projector: bool = Field(False, description="With freeze_tower: keep the projector the `tower` stage aligned (tower.align) frozen too, so the image tokens keep pointing at the words (w/o: 'which side' falls to chance, experiments/miniature y7 vs y10).")

    @field_validator("sources")
    @classmethod
    def _known_sources(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        bad = [s for s in v if s not in SOURCES]
        if bad:
            raise ValueError(f"unknown source(s) {bad}. Got {list(v)}; use some of {list(SOURCES)}.")
        return v

    @model_validator(mode="after")
    def _projector_with_tower(self) -> "PretrainConfig":
        if self.freeze_projector and not self.freeze_tower:
            raise ValueError("pretrain.freeze_projector keeps the projector the tower stage aligned; it needs "
                             "freeze_tower: true (a tower trained on, its projector frozen, would drift from it).")
        return self

    @field_validator("extra")
    @classmethod
    def _known_extra(cls, v: dict[str, int]) -> dict[str, int]:
        bad = [s for s in v if s not in mix.PREFIXES]
        neg = [s for s, n in v.items() if n < 0]
        if bad or neg:
            raise ValueError(f"extra maps a source ({', '.join(mix.PREFIXES)}) to a count >= 0. Got {v}.")
        return v


# --------------------------------------------------------------------------------------------
# Inputs


def fingerprint(cfg: PretrainConfig) -> dict:
    """Content of the mix and its images (the base model is an input; the toy templates are code)."""
    out = {"annotations": fingerprint_path(resolve(cfg.annotations)), "images": fingerprint_path(resolve(cfg.image_root))}
    return out | ({"pope": fingerprint_path(resolve(cfg.pope))} if cfg.pope and cfg.heldout else {})


def _check_inputs(cfg: PretrainConfig, base: Path) -> None:
    errors = [e for e in (fit.base_missing(base),) if e]
    if not resolve(cfg.annotations).is_file():
        errors.append(f"Mix not found: {resolve(cfg.annotations)}. Build the toy world (python -m seva_tasks.toy) "
                      "or set pretrain.annotations=data/toy/llava_v1_5_mix665k.json.")
    if cfg.pope and cfg.heldout and not (resolve(cfg.pope) / "llava_pope_test.jsonl").is_file():
        errors.append(f"POPE not found: {resolve(cfg.pope) / 'llava_pope_test.jsonl'} (the gates ask it). Build the toy "
                      "world, point pretrain.pope at its eval/pope, or set pretrain.pope=null to skip the gates.")
    if errors:
        raise InputError("\n".join(errors))


def _source(row: dict) -> str:
    return "text" if "image" not in row else next((s for s, p in mix.PREFIXES.items() if row["image"].startswith(p + "/")), "other")


def _conversations(cfg: PretrainConfig) -> tuple[list[tuple[list[dict], Any]], dict]:
    """(turns, image) per training conversation: the mix's rows of `sources`, then the extra scenes.

    `image` is a path, a JPEG-encoded scene (bytes) or None.
    """
    rows = json.loads(resolve(cfg.annotations).read_text())
    convs = [(r["conversations"], resolve(cfg.image_root) / r["image"] if "image" in r else None)
             for r in rows if _source(r) in cfg.sources]
    counts = {"mix_rows": len(convs)}
    for source, n in sorted(cfg.extra.items()):
        rng = random.Random(f"{cfg.seed}:pretrain:{source}")
        for i in range(n):
            scene = random_scene(rng, mix.KINDS[source], f"pretrain/{source}/{i:06d}.jpg")
            qas = mix.QAS[source](rng, scene, yes_share=cfg.yes_share) if source == "gqa" else mix.QAS[source](rng, scene)
            suffix = f"\n{SHORT_ANSWER}" if source in ("ocr_vqa", "gqa") else ""  # as toy's mix asks them
            turns = [t for q, a in qas for t in ({"from": "human", "value": q + suffix}, {"from": "gpt", "value": a})]
            buf = io.BytesIO()
            render(scene).save(buf, format="JPEG", quality=95)
            convs.append((turns, buf.getvalue()))
        counts[f"extra_{source}"] = n
    return convs, counts


# --------------------------------------------------------------------------------------------
# Tokens and pixels


def _encode(turns: list[dict], tok, image_id: int, image_tokens: int, has_image: bool) -> tuple[list[int], list[int]]:
    """LLaVA's preprocess_v1 ids and labels (-100 outside answers and their `</s>`), `<image>` first and
    expanded as the processor does."""
    rounds = [(turns[i]["value"], turns[i + 1]["value"]) for i in range(0, len(turns) - 1, 2)]
    ids, loss = encode(tok, conversation(rounds, "vicuna_v1", image=has_image))
    labels = [t if x else -100 for t, x in zip(ids, loss)]
    if has_image:
        at = ids.index(image_id)
        ids[at:at + 1] = [image_id] * image_tokens
        labels[at:at + 1] = [-100] * image_tokens
    return ids, labels


def _pixels(image, size: int, mean) -> "Any":
    """uint8 [3, size, size] as the engines feed the model (pad to square with the mean colour, resize)."""
    from PIL import Image

    from seva_tasks.llava.images import square_tensor

    with Image.open(io.BytesIO(image) if isinstance(image, bytes) else image) as im:
        return square_tensor(im.convert("RGB"), size, mean)


def _examples(cfg: PretrainConfig, processor, config) -> tuple[list[dict], dict]:
    """Tokenized conversations with their uint8 images; drops (and counts) the over-long ones."""
    convs, counts = _conversations(cfg)
    tok, ip = processor.tokenizer, processor.image_processor
    out, too_long = [], 0
    for turns, image in convs:
        ids, labels = _encode(turns, tok, config.image_token_index, config.image_seq_length, image is not None)
        if len(ids) > cfg.max_length:
            too_long += 1
            continue
        px = _pixels(image, config.vision_config.image_size, ip.image_mean) if image is not None else None
        out.append({"input_ids": ids, "labels": labels, "pixels": px})
    if cfg.text:  # tokenized as the vicuna stage's; none is near max_length (16 caption words, one question)
        grid = config.vision_config.image_size // config.vision_config.patch_size
        out += lm.examples(tok, f"{cfg.seed}:pretrain", cfg.text, lookup_share=0.0, grid=grid, template="vicuna_v1")
        counts["text"] = cfg.text
    counts.update(examples=len(out), dropped_too_long=too_long,
                  answer_tokens=sum(sum(t != -100 for t in e["labels"]) for e in out))
    if not out:
        raise InputError(f"No training conversations: pretrain.sources={list(cfg.sources)} and pretrain.extra="
                         f"{cfg.extra} select nothing under max_length={cfg.max_length}. Add sources or extra scenes.")
    return out, counts


# --------------------------------------------------------------------------------------------
# Training and saving


def _gates(cfg: PretrainConfig, model, processor, items: list[dict], answers: list[str], held: dict) -> dict:
    """The gates' measurements, with standard errors where a share's: `items` again on noised images (`answers`
    are the clean ones), and the world's POPE clean and noised."""
    noised_answers = ask(model, processor, items, noise_step=cfg.noise_step, seed=cfg.seed)
    noised = accuracy(model, processor, items, noised_answers)
    clean = gates.ask_pope(model, processor, resolve(cfg.pope))
    noised_pope = gates.ask_pope(model, processor, resolve(cfg.pope), cfg.noise_step, cfg.seed)
    pope = {"clean": gates.pope(clean.metrics), "noised": gates.pope(noised_pope.metrics), "questions": len(clean.rows),
            "noise_step": cfg.noise_step}
    values = {"heldout_all": held["all"], "heldout_shape": held.get("shape", 0.0), "pope_yes_ratio": pope["clean"]["yes_ratio"],
              "pope_f1": pope["clean"]["f1"], "noise_drop": held["all"] - noised["all"],
              "noise_yes_shift": pope["noised"]["yes_ratio"] - pope["clean"]["yes_ratio"]}
    hits = [answer_matches(a, it["answer"]) for it, a in zip(items, answers)]
    noised_hits = [answer_matches(a, it["answer"]) for it, a in zip(items, noised_answers)]
    shape = [h for it, h in zip(items, hits) if it["kind"] == "shape"]
    yes = pope["clean"]["yes_ratio"]  # the splits' mean; their sizes are equal, so the pooled share's SE
    se = {"heldout_all": gates.share_se(hits), "pope_yes_ratio": math.sqrt(yes * (1 - yes) / len(clean.rows)),
          "noise_drop": gates.paired_se(hits, noised_hits)} | ({"heldout_shape": gates.share_se(shape)} if shape else {})
    return {"gates": gates.judge(values, se), "pope": pope, "noised": noised}


# --------------------------------------------------------------------------------------------
# Stage entry point


def run(cfg: PretrainConfig, inputs: dict[str, Path], out_dir: Path) -> dict:
    """Train the base model on the mix (+ extra scenes) and publish `out_dir/model/`.

    Args:
        cfg: the stage config. inputs: {"model": the random base model}. out_dir: the store's partial dir.
    Returns:
        Manifest stats: counts (mix rows, extra scenes, examples, drops, answer tokens), steps,
        final loss, held-out accuracy per question type with chance levels, seconds.
    """
    started = time.time()
    base = Path(inputs["model"])
    _check_inputs(cfg, base)
    with fit.loaded(cfg, base) as (processor, model):
        if cfg.freeze_tower:
            tower.freeze(model, projector=cfg.freeze_projector)
        examples, counts = _examples(cfg, processor, model.config)
        log.info("Pretraining %s for %d steps on %d conversations (%s).", base, cfg.steps, len(examples), counts)
        history = fit.fit(cfg, model.train(), examples, processor, out_dir, phase="instruct", desc="pretrain (instruct)")
        fit.save(model.eval(), base, out_dir / "model")
        trained = time.time() - started
        items = heldout(cfg.seed, cfg.heldout)
        model, processor = load(out_dir / "model") if items else (None, None)
        answers = ask(model, processor, items) if items else []
        held = accuracy(model, processor, items, answers) if items else {}
        gated = _gates(cfg, model, processor, items, answers, held) if items and cfg.pope else {}
    final = [s["loss"] for s in fit.metrics(out_dir, history)]
    log.info("Pretrained in %.0f s; held-out accuracy %s → %s", trained, held, out_dir / "model")
    return {"counts": counts, "steps": cfg.steps, "final_loss": final[-1] if final else None,
            "heldout": {"accuracy": held, "majority": majority(items) if items else {}, "questions": len(items),
                        "noised": gated.get("noised")},
            "pope": gated.get("pope"), "gates": gated.get("gates"),
            "seconds": {"train": round(trained, 1), "total": round(time.time() - started, 1)}}
