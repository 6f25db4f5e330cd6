"""The toy world on disk: its config, where its files are, and building it once per config.

    .venv/bin/python -m seva_tasks.toy [key=value ...]   # e.g. seed=3; instant when already built

`<root>/` (default `data/toy/`, git-ignored) holds:

    world.json                  manifest, written last: identity, counts, sha256 of every file, digest
    scenes.jsonl                ground truth of every image, one `random_scene` record per line
    llava_v1_5_mix665k.json     LLaVA-1.5's instruction mix: real schema, prefixes and prompts
    images/<prefix>/<file>      e.g. images/ocr_vqa/images/1509342865.jpg (prefix as in the JSON)
    model/                      tiny LlavaForConditionalGeneration + LlavaProcessor, float32
                                safetensors that transformers and vLLM both load
    eval/<DIR>/                 every benchmark in LLaVA's playground/data/eval layout
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from filelock import FileLock
from pydantic import Field, model_validator

from seva_tasks.base import StageConfig, resolve
from seva_tasks.errors import ConfigError
from seva_tasks.llava import prompts
from seva_tasks.store import file_sha256, publish_dir
from seva_tasks.toy import benchmarks as toy_benchmarks
from seva_tasks.toy import mix, model, scenes

MIX = "llava_v1_5_mix665k.json"
SCENES = "scenes.jsonl"
WORLD = "world.json"


class ToyConfig(StageConfig):
    """The embedded toy world and tiny model; every byte of `<root>/` follows from these fields.

    Args:
        seed: seeds scenes, conversations, and model weights.
        root: where the world is built.
        books, signs, scenes, text_only: how many of each the 665k JSON holds.
        image_size, patch_size, hidden_size, layers, vocab_size, init_std: the tiny LLaVA (vision_*, lm_heads: per tower).
        bench_shapes, bench_signs, bench_books: the held-out scenes every benchmark is written from.
    """

    seed: int = Field(0, description="Seeds every random choice: scenes, conversations, weights.")
    root: Path = Field(Path("data/toy"), description="Where the world is built (relative: to the project root).")
    books: int = Field(48, ge=1, description="Book covers under ocr_vqa/images/, one OCR-VQA conversation each.")
    signs: int = Field(48, ge=1, description="Signs under textvqa/train_images/, one TextCaps caption prompt each.")
    scenes: int = Field(24, ge=1, description="Shape scenes for each of coco/train2017, gqa/images, vg/VG_100K.")
    text_only: int = Field(16, ge=0, description="Text-only conversations (rows without `image`, like ShareGPT).")
    image_size: int = Field(64, ge=8, description="Vision input side in px; the processor resizes and crops to it.")
    patch_size: int = Field(16, ge=1, description="Vision patch side; image tokens = (image_size / patch_size)^2.")
    hidden_size: int = Field(64, ge=32, description="Width of both towers; a multiple of 32 (heads of dim 32).")
    layers: int = Field(2, ge=2, description="Layers in each tower (LLaVA reads the penultimate CLIP layer).")
    vision_layers: int | None = Field(None, ge=2, description="Layers of the vision tower alone (default: layers); LLaVA reads its penultimate one.")
    vision_hidden_size: int | None = Field(None, ge=32, description="Width of the vision tower alone (default: hidden_size); a multiple of 32.")
    lm_heads: int | None = Field(None, ge=1, description="Attention heads of the language model, each of dim 32 (what vLLM's CPU attention runs) whatever the width (default: hidden_size / 32). 4 or 8 did not teach lettered choice in text (experiments/miniature, sessions 6-7).")
    vocab_size: int = Field(1280, ge=512, description="Upper bound of the vocabulary (256 byte tokens included) trained on the toy corpus.")
    init_std: float = Field(0.02, gt=0, description="Std of the random weights (transformers' initializer_range).")
    split_punctuation: bool = Field(False, description="Learn no BPE merge across punctuation or a newline, as Llama's vocabulary has none: without it the toy corpus makes 'circle?' one token, unlike the 'circle' the caption and image name (experiments/miniature, session 10).")
    # The benchmarks' held-out scenes. The defaults keep `make run` quick (POPE 162 questions, GQA 41); 520/64/32
    # give POPE 3,354 and GQA 898 (tests/test_benchmarks.py checks the floors: POPE >= 3,000, GQA >= 400, MME >= 600).
    bench_shapes: int = Field(24, ge=1, description="Held-out shape scenes for the benchmarks (POPE ~6 questions each, GQA ~2).")
    bench_signs: int = Field(8, ge=1, description="Held-out signs for the benchmarks (TextVQA, VizWiz, MME OCR, ...).")
    bench_books: int = Field(4, ge=1, description="Held-out book covers for the benchmarks.")

    @model_validator(mode="after")
    def _check_shapes(self) -> ToyConfig:
        errors = []
        if self.image_size % self.patch_size:
            errors.append(f"toy.image_size must be a multiple of toy.patch_size. Got {self.image_size} and "
                          f"{self.patch_size}; e.g. image_size=64 patch_size=16.")
        for name in ("hidden_size", "vision_hidden_size"):
            if (getattr(self, name) or 32) % 32:
                errors.append(f"toy.{name} must be a multiple of 32 (attention head_dim 32, which vLLM's CPU "
                              f"backend supports). Got {getattr(self, name)}; e.g. {name}=64.")
        if errors:
            raise ValueError(" ".join(errors))
        return self

    @property
    def image_tokens(self) -> int:
        """How many `<image>` tokens one image expands to (CLS dropped: strategy 'default')."""
        return (self.image_size // self.patch_size) ** 2


# --------------------------------------------------------------------------------------------
# Where the files are


def root_dir(cfg: ToyConfig) -> Path:
    """`cfg.root` as an absolute path."""
    return resolve(cfg.root)


def model_dir(cfg: ToyConfig) -> Path:
    """The tiny LLaVA (`from_pretrained` / `vllm.LLM(model=...)` directory)."""
    return root_dir(cfg) / "model"


def mix_path(cfg: ToyConfig) -> Path:
    """The toy `llava_v1_5_mix665k.json`; image paths in it are relative to `images_dir`."""
    return root_dir(cfg) / MIX


def images_dir(cfg: ToyConfig) -> Path:
    """The image root: the 665k JSON's `image` paths and scene records' `image` are relative to it."""
    return root_dir(cfg) / "images"


def scenes_path(cfg: ToyConfig) -> Path:
    """`scenes.jsonl`: one `random_scene` record per image, plus its 665k `id` and `source`."""
    return root_dir(cfg) / SCENES


def load_scenes(cfg: ToyConfig) -> list[dict]:
    """Every training image's scene record (built first if needed)."""
    ensure(cfg)
    return [json.loads(line) for line in scenes_path(cfg).read_text().splitlines()]


def manifest(cfg: ToyConfig) -> dict:
    """The manifest (config, counts, per-file sha256, digest), building the world first if needed.

    Stages that read toy files can use `manifest(cfg)["digest"]` as their external fingerprint.
    """
    ensure(cfg)
    return json.loads((root_dir(cfg) / WORLD).read_text())


# --------------------------------------------------------------------------------------------
# Identity: is the world on disk the one this code and config build?

# Every source file that decides the bytes: this package's builders, the benchmark writers, and
# the LLaVA prompt strings the mix and the tokenizer use.
_SOURCES = [Path(__file__), *(Path(m.__file__) for m in (scenes, mix, model, prompts)), *toy_benchmarks.SOURCES]
# Read once, at import: a process that imported older toy code must not stamp the world it builds
# with the newer source on disk (it would then pass for current while holding the old generator's bytes).
_CODE = hashlib.sha256(b"".join(p.read_bytes() for p in _SOURCES)).hexdigest()[:16]


def _identity(cfg: ToyConfig) -> dict:
    """What decides the bytes: every field except where they are written, and this code's source.

    Hashing the source (not a hand-bumped version) means an edited generator never leaves a stale
    world behind; a rebuild takes seconds, and unchanged bytes keep downstream stages cached.
    """
    return {"code": _CODE, **cfg.model_dump(mode="json", exclude={"root"})}


def _is_current(root: Path, cfg: ToyConfig) -> bool:
    """Whether `root` holds a finished world (world.json) built by this code from this config."""
    try:
        return json.loads((root / WORLD).read_text())["identity"] == _identity(cfg)
    except (OSError, ValueError, KeyError):
        return False


# --------------------------------------------------------------------------------------------
# Building


def ensure(cfg: ToyConfig | None = None) -> Path:
    """Build the world into `cfg.root` unless it is already there for this config; return the root.

    Builds in a temp dir beside the root and renames it into place (world.json is written last),
    under a lock so that concurrent callers build once. A root built from another config is replaced.
    """
    cfg = cfg or ToyConfig()
    root = root_dir(cfg)
    if _is_current(root, cfg):
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(root.parent / f".{root.name}.lock"):
        if _is_current(root, cfg):
            return root
        if root.exists() and not (root / WORLD).is_file() and any(root.iterdir()):
            raise ConfigError(f"toy.root {root} exists but is not a toy world (no {WORLD}), so it will not be "
                              f"replaced. Point toy.root at a new or empty directory, e.g. toy.root=data/toy.")
        for part in ("tmp", "old"):  # left behind by a killed build
            for stale in root.parent.glob(f".{root.name}.{part}-*"):
                shutil.rmtree(stale, ignore_errors=True)
        tmp = root.parent / f".{root.name}.tmp-{os.getpid()}"
        try:
            _build(cfg, tmp)
            publish_dir(tmp, root)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def _build(cfg: ToyConfig, out: Path) -> None:
    """Write scenes, images, the 665k JSON, the model and the benchmarks into `out`, then world.json."""
    training = mix.make_scenes(cfg)
    for s in training:
        path = out / "images" / s["image"]
        path.parent.mkdir(parents=True, exist_ok=True)
        scenes.render(s).save(path, format="JPEG", quality=95)
    with open(out / SCENES, "w") as f:
        f.writelines(json.dumps(s, ensure_ascii=False) + "\n" for s in training)
    rows = mix.mix_rows(cfg, training)
    (out / MIX).write_text(json.dumps(rows, indent=1, ensure_ascii=False))
    model.save_model(cfg, model.corpus(rows, training), out / "model")
    toy_benchmarks.write_toy_world(out / "eval", cfg.seed, cfg.bench_shapes, cfg.bench_signs, cfg.bench_books)
    _write_world(cfg, out, rows, training)


def _write_world(cfg: ToyConfig, out: Path, rows: list[dict], training: list[dict]) -> None:
    """The manifest: identity, paths, counts, every file's sha256 and their digest."""
    files = {p.relative_to(out).as_posix(): file_sha256(p) for p in sorted(out.rglob("*")) if p.is_file()}
    sources = {src: sum(s["source"] == src for s in training) for src in mix.PREFIXES}
    manifest = {
        "identity": _identity(cfg),
        "paths": {"mix": MIX, "images": "images", "scenes": SCENES, "model": "model", "eval": "eval"},
        "counts": {"rows": len(rows), "text_only_rows": sum("image" not in r for r in rows), "images": sources},
        "image_tokens": cfg.image_tokens,
        "digest": hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest(),
        "files": files,
    }
    (out / WORLD).write_text(json.dumps(manifest, indent=1, sort_keys=True))


def main(argv: list[str]) -> None:
    """`python -m seva_tasks.toy [key=value ...]`: build (or find) the world and say where it is."""
    overrides = dict(a.split("=", 1) for a in argv)
    cfg = ToyConfig.model_validate(overrides)
    root = ensure(cfg)
    w = json.loads((root / WORLD).read_text())
    print(f"Toy world ({w['counts']['rows']} rows, {sum(w['counts']['images'].values())} images, "
          f"{len(w['files'])} files, digest {w['digest'][:12]}) → {root}")
