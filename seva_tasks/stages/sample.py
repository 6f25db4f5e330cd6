"""Stage `sample`: LLaVA-665k conversations -> `unlabeled.parquet`, SeVa's unlabeled prompts.

    seva run --until sample                      # this stage (and nothing after it)
    seva run --until sample sample.seed=3        # another seeded draw

SeVa (`data/step1/`, see reference/seva-recipe.md §1a) splits the mix by the image path's first
component, draws 4,000 ocr_vqa and 8,000 textvqa conversations, keeps ≤ 2 human turns of each and
strips `<image>` (plus, for ocr_vqa, the short-answer suffix and every newline). SeVa's
`random.seed(0)` is commented out, so its draw cannot be reproduced; ours is seeded: each subset is
shuffled by `Random(f"{seed}:{subset}")` and each conversation's turns by `Random(f"{seed}:{subset}:{id}")`.

Reading the 1 GB file: one `msgspec` pass splits the top-level array into raw byte slices (no Python
objects per field); then only each record's `image` is decoded, to find its subset. Records of a
configured subset are decoded fully (typed Structs), cleaned and their image opened and decoded
lazily, in the seeded order, until the subset's count is reached. A record that fails is dropped
and counted by reason instead of failing the file; drop counts cover the records examined.

Output columns: id (`<record id>:<turn>`, unique), record_id, subset, image (path relative to
`image_root`), question, turn (index among the conversation's human turns).
"""

from __future__ import annotations

import logging
import mmap
import os
import random
import re
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import Any

import msgspec
from pydantic import Field, model_validator

from seva_tasks.artifacts import UNLABELED
from seva_tasks.base import StageConfig, resolve
from seva_tasks.errors import InputError
from seva_tasks.fingerprint import fingerprint as fingerprint_path
from seva_tasks.llava.prompts import SHORT_ANSWER
from seva_tasks.progress import report, track

OUTPUT = UNLABELED
log = logging.getLogger(__name__)

# SeVa's stripping rules (make_ocrvqa_data.py / make_textvqa_data.py); other subsets get textvqa's.
OCR_SUFFIX = SHORT_ANSWER  # LLaVA's suffix on the mix's OCR-VQA questions
PAPER_STRIP = {"ocr_vqa": ("<image>", OCR_SUFFIX, "\n")}
DEFAULT_STRIP = ("<image>\n",)


class SubsetSpec(StageConfig):
    """How many conversations to draw from one subset and how to clean their questions."""

    images: int = Field(0, ge=0, description="Conversations (one image each) to draw (paper: ocr_vqa 4000, textvqa 8000).")
    questions_per_image: int = Field(2, ge=1, description="Keep at most this many human turns per conversation, drawn at random (paper: 2).")
    strip: tuple[str, ...] = Field(DEFAULT_STRIP, description="Substrings removed from each question, in order; defaults to SeVa's rule for the subset name.")


class SampleConfig(StageConfig):
    """Settings of the `sample` stage.

    Args: see each field's description. The defaults are the paper's (DESIGN §6); paths are relative
    to the project root unless absolute.
    """

    annotations: Path = Field(Path("data/llava/llava_v1_5_mix665k.json"), description="LLaVA-1.5 instruction mix JSON (a list of conversations).")
    image_root: Path = Field(Path("data/llava"), description="Directory the records' `image` paths are relative to.")
    subsets: dict[str, SubsetSpec] = Field(
        default_factory=lambda: {"ocr_vqa": SubsetSpec(images=4000, strip=PAPER_STRIP["ocr_vqa"]), "textvqa": SubsetSpec(images=8000)},
        description="Subset (first component of the image path) -> draw spec; other subsets are skipped.",
    )
    seed: int = Field(0, description="Seed of the draw (SeVa's was unseeded).")
    max_image_pixels: int = Field(89_478_485, ge=1, description="Images with more pixels are dropped as too large (PIL's own bomb limit, 2x this default, also applies).")

    @model_validator(mode="before")
    @classmethod
    def _paper_strip_rules(cls, data: Any) -> Any:
        """A subset without an explicit `strip` gets SeVa's rule for its name."""
        if isinstance(data, dict) and isinstance(data.get("subsets"), dict):
            subsets = {}
            for name, spec in data["subsets"].items():
                if isinstance(spec, dict) and "strip" not in spec:
                    spec = {**spec, "strip": PAPER_STRIP.get(name, DEFAULT_STRIP)}
                subsets[name] = spec
            data = {**data, "subsets": subsets}
        return data


class _Head(msgspec.Struct):
    image: str | None = None


class _Turn(msgspec.Struct):
    from_: str = msgspec.field(name="from")
    value: str


class _Record(msgspec.Struct):
    id: str | int
    image: str
    conversations: list[_Turn]


_MISSING = re.compile(r"Object missing required field `([^`]+)`(?: - at `\$\.?([^`]*)`)?")
_AT = re.compile(r" - at `\$\.?([^`]*)`")
_INDEX = re.compile(r"\[\d+\]")


def _reason(err: msgspec.ValidationError) -> str:
    """A drop reason from a msgspec validation error, e.g. `missing_field:conversations[].value`."""
    msg = str(err)
    if m := _MISSING.match(msg):
        where = _INDEX.sub("[]", m.group(2) or "")
        return f"missing_field:{where + '.' if where else ''}{m.group(1)}"
    m = _AT.search(msg)
    return "wrong_type:" + (_INDEX.sub("[]", m.group(1)) if m else "record")


def _subset(path: str) -> str | None:
    """The image path's first component, or None if the path is unsafe (absolute, empty, `..`, NUL).

    Plain string tests first: PurePosixPath costs ~3 µs a row, too much for 665k rows.
    """
    if path.startswith("/") or not path.strip() or "\x00" in path:
        return None
    if ".." not in path and "//" not in path and not path.startswith("./"):
        return path.split("/", 1)[0]
    parts = PurePosixPath(path).parts
    return None if ".." in parts or not parts else parts[0]


def _read(path: Path) -> list[msgspec.Raw]:
    """The top-level array as raw per-record slices; InputError if the file is unusable.

    The file is memory-mapped, not read: no 1 GB copy, and the slices point into the page cache.
    """
    hint = "Fix or re-download the file (or point sample.annotations at it) and rerun `seva run --until sample`."
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                raise InputError(f"{path}: not valid JSON (the file is empty). {hint}")
            data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except OSError as e:
        raise InputError(f"{path}: cannot read the annotations file ({e.strerror or e}). {hint}") from e
    try:
        return msgspec.json.decode(data, type=list[msgspec.Raw])
    except msgspec.ValidationError as e:
        raise InputError(f"{path}: the top level must be a JSON array of conversations ({e}). {hint}") from e
    except msgspec.DecodeError as e:
        raise InputError(f"{path}: not valid JSON ({e}). {hint}") from e
    except RecursionError as e:  # msgspec's depth check raises it, not a DecodeError
        raise InputError(f"{path}: JSON nested too deeply to decode ({e}). {hint}") from e


def _questions(rec: _Record, strip: tuple[str, ...]) -> tuple[list[tuple[int, str]], str | None]:
    """The cleaned human turns as (turn index, question), or a drop reason."""
    humans = [t.value for t in rec.conversations if t.from_ == "human"]
    if not humans:
        return [], "no_human_turn"
    out = []
    for i, q in enumerate(humans):
        for s in strip:
            q = q.replace(s, "")
        q = q.replace("<image>", "")  # a leftover token would give the prompt two images
        if q.strip():
            out.append((i, q))
    return out, None if out else "empty_question"


def _check_image(root: Path, rel: str, max_pixels: int) -> str | None:
    """None if the image under `root` opens and decodes, else the drop reason."""
    from PIL import Image

    try:
        real = (root / rel).resolve()
    except (OSError, RuntimeError):  # symlink loop
        return "image_missing"
    if not real.is_relative_to(root):
        return "image_outside_root"
    if not real.is_file():
        return "image_missing"
    try:
        with Image.open(real) as im:
            if im.width * im.height > max_pixels:
                return "image_too_large"
            im.draft("L", (1, 1))  # JPEG: luma at 1/8 scale, ~3x cheaper than a full decode, still reads every byte
            im.load()
    except Image.DecompressionBombError:
        return "image_too_large"
    except (OSError, SyntaxError, ValueError, EOFError):  # zero-byte, truncated, not an image
        return "image_undecodable"
    return None


def _split(raws: list[msgspec.Raw], cfg: SampleConfig, drops: Counter, counts: Counter) -> dict[str, list[int]]:
    """Read each record's `image` only; return subset -> indices of its records, in file order."""
    head = msgspec.json.Decoder(_Head)
    by_subset: dict[str, list[int]] = {name: [] for name in cfg.subsets}
    step = 20_000  # progress per chunk: a per-record generator would cost ~1 µs x 665k
    for lo in track(range(0, len(raws), step), desc="sample: read records"):
        for i in range(lo, min(lo + step, len(raws))):
            try:
                image = head.decode(raws[i]).image
            except msgspec.ValidationError as e:
                drops[_reason(e)] += 1
                continue
            except UnicodeDecodeError:  # the top-level pass skips strings without checking their UTF-8
                drops["invalid_utf8"] += 1
                continue
            if image is None:
                counts["text_only"] += 1
            elif (subset := _subset(image)) is None:
                drops["unsafe_image_path"] += 1
            elif subset in by_subset:
                by_subset[subset].append(i)
            else:
                counts[f"other_subset:{subset}"] += 1
    return by_subset


def _validate(raw: msgspec.Raw, dec: msgspec.json.Decoder, strip: tuple[str, ...]) -> tuple[tuple | None, str | None]:
    """(record id, image, questions) of a record, or the reason it is unusable."""
    try:
        rec = dec.decode(raw)
    except msgspec.ValidationError as e:
        return None, _reason(e)
    except UnicodeDecodeError:  # in a field `_split` skipped, e.g. a question
        return None, "invalid_utf8"
    questions, why = _questions(rec, strip)
    return (None, why) if why else ((str(rec.id), rec.image, questions), None)


def _draw(subset: str, idx: list[int], raws: list, cfg: SampleConfig, root: Path, seen: set[str], drops: Counter) -> tuple[list, int]:
    """Seeded draw of up to `images` usable records: validated and image-checked in the shuffled order.

    Records are examined lazily, only until the count is reached, so drop counts cover the examined
    records (every record of the subset when it has fewer usable ones than asked for).
    """
    spec, dec = cfg.subsets[subset], msgspec.json.Decoder(_Record)
    order = list(idx)
    random.Random(f"{cfg.seed}:{subset}").shuffle(order)
    chosen: list = []
    pos = examined = 0
    with ThreadPoolExecutor(max_workers=4) as pool:  # PIL releases the GIL while decoding
        while len(chosen) < spec.images and pos < len(order):
            need = spec.images - len(chosen)
            chunk = order[pos : pos + need + need // 32 + 16]  # small overshoot: extra image checks are wasted
            pos += len(chunk)
            checked = [_validate(raws[i], dec, spec.strip) for i in chunk]
            images = pool.map(lambda c: c[0] and _check_image(root, c[0][1], cfg.max_image_pixels), checked)
            for i, (cand, why), image_why in zip(chunk, checked, images):
                if len(chosen) == spec.images:
                    break  # rows past the target were checked only speculatively: not counted
                examined += 1
                why = why or ("duplicate_id" if cand[0] in seen else image_why)
                if why:
                    drops[why] += 1
                    continue
                seen.add(cand[0])
                chosen.append((i, *cand))
            report(f"sample: draw {subset}", len(chosen), spec.images)
    return chosen, examined


def _rows(subset: str, chosen: list, cfg: SampleConfig) -> list[tuple]:
    """Output rows: ≤ questions_per_image turns per conversation, drawn per record, kept in turn order."""
    n = cfg.subsets[subset].questions_per_image
    rows = []
    for i, rid, image, questions in chosen:
        picks = random.Random(f"{cfg.seed}:{subset}:{rid}").sample(questions, min(n, len(questions)))
        for turn, q in sorted(picks):
            rows.append((subset, i, turn, f"{rid}:{turn}", rid, image, q))
    return rows


def fingerprint(cfg: SampleConfig) -> dict:
    """Content of the annotation file (hashed once, then memoized by size + mtime). Images are not
    fingerprinted: 665k files would cost every `seva status`; the rows name them and are checked on read."""
    return {"annotations": fingerprint_path(resolve(cfg.annotations))}


def reference_answers(annotations: Path, ids: set[str]) -> dict[str, str]:
    """The mix's own answer (the `gpt` turn after it) to each row id `<record id>:<turn>` in `ids`.

    SeVa never uses these; the experiment does, to check whether chosen answers are the right ones.
    """
    dec, found = msgspec.json.Decoder(_Record), {}
    wanted = {i.rsplit(":", 1)[0] for i in ids}
    for raw in _read(resolve(annotations)):
        try:
            rec = dec.decode(raw)
        except (msgspec.DecodeError, UnicodeDecodeError):
            continue  # text-only or malformed: sample dropped it too
        if str(rec.id) not in wanted:
            continue
        turn = 0
        for i, t in enumerate(rec.conversations):
            if t.from_ == "human":
                key = f"{rec.id}:{turn}"
                if key in ids and i + 1 < len(rec.conversations):
                    found[key] = rec.conversations[i + 1].value
                turn += 1
    return found


def run(cfg: SampleConfig, inputs: dict[str, Path], out_dir: Path) -> dict:
    """Draw SeVa's unlabeled prompts and write `out_dir/unlabeled.parquet`.

    Args:
        cfg: the stage config. inputs: none (this stage reads only external files). out_dir: where to write.
    Returns:
        Manifest stats: counts, per-subset counts (candidates, examined, images, questions,
        shortfall), drops (reason -> records), image_root (what `image` is relative to), seconds.
    """
    path, root = resolve(cfg.annotations), resolve(cfg.image_root).resolve()
    if not root.is_dir():
        raise InputError(f"{root}: image_root is not a directory. Set sample.image_root and rerun `seva run --until sample`.")
    t0 = time.perf_counter()
    raws = _read(path)
    t1 = time.perf_counter()
    drops: Counter = Counter()
    counts: Counter = Counter(records=len(raws))
    by_subset = _split(raws, cfg, drops, counts)
    t2 = time.perf_counter()
    rows, per_subset, seen = [], {}, set()
    for subset in sorted(by_subset):  # sorted: the canonical config key ignores dict order, so must the bytes
        chosen, examined = _draw(subset, by_subset[subset], raws, cfg, root, seen, drops)
        rows += _rows(subset, chosen, cfg)
        per_subset[subset] = {"candidates": len(by_subset[subset]), "examined": examined, "images": len(chosen),
                              "shortfall": cfg.subsets[subset].images - len(chosen)}
    del raws, by_subset  # frees the file's pages before writing
    t3 = time.perf_counter()
    if not rows:
        raise InputError(
            f"{path}: no usable rows for subsets {', '.join(sorted(cfg.subsets))} "
            f"({counts['records']} records; drops: {dict(drops) or 'none'}). "
            f"Check sample.subsets and sample.image_root, then rerun `seva run --until sample`."
        )
    df = _write(rows, out_dir / OUTPUT)
    for subset, n in df.group_by("subset").len().iter_rows():
        per_subset[subset]["questions"] = n
    counts["rows"] = df.height
    log.info("Kept %s questions from %s images (%s records read, %s dropped) → %s", f"{df.height:,}",
             f"{sum(v['images'] for v in per_subset.values()):,}", f"{counts['records']:,}",
             f"{sum(drops.values()):,}", out_dir / OUTPUT)
    for subset, v in per_subset.items():
        if v["shortfall"]:
            log.warning("Subset %s: %d fewer images than requested (only %d usable).", subset, v["shortfall"], v["images"])
    return {
        "counts": dict(sorted(counts.items())),  # records, rows, text_only, other_subset:<name>
        "subsets": per_subset,
        "drops": dict(sorted(drops.items())),
        "image_root": str(root),
        "annotations": str(path),
        "seconds": {"read": round(t1 - t0, 3), "split": round(t2 - t1, 3), "draw": round(t3 - t2, 3),
                    "write": round(time.perf_counter() - t3, 3)},
    }


def _write(rows: list[tuple], path: Path):
    """Write the rows sorted by (subset, file position, turn) as Parquet; return the frame."""
    import polars as pl

    cols = list(zip(*sorted(rows)))
    df = pl.DataFrame(
        {"id": cols[3], "record_id": cols[4], "subset": cols[0], "image": cols[5], "question": cols[6], "turn": cols[2]},
        schema={"id": pl.String, "record_id": pl.String, "subset": pl.String, "image": pl.String,
                "question": pl.String, "turn": pl.Int32},
    )
    df.write_parquet(path, compression="zstd")
    return df

