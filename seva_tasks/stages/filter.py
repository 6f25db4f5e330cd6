"""Stage `filter`: generated answer pairs -> preference pairs in TRL's vision format, `pairs.parquet`.

    seva run --until filter                          # this stage and everything before it
    seva run --until filter filter.mode=seva         # SeVa's own filter, exactly
    seva inspect pairs                               # preview + counts of the published pairs

`mode: seva` is `data/step3/make_pair_*.py`: drop a pair when the two raw answers are equal (SeVa
decodes with special tokens, so an answer that ended at EOS carries `</s>`), then remove `</s>` and
every `\\n` from both. `mode: strict` (default) strips surrounding whitespace, keeps newlines, and
drops, first reason wins: empty answer, answer cut at max_new_tokens, exact-equal, equal after
normalization (case, whitespace, punctuation), and, if `near_duplicate` is set, word-level similarity
at or above it. Every drop is counted by reason. Duplicating data (paper: x2) is training's business.

`pairs.parquet` columns: images (list of {bytes, path}: TRL's `images`), prompt / chosen / rejected
(conversational: lists of {role, content}), then provenance: id, subset, question, image_file (not
`image`: TRL's collator would take an `image` column for the picture), augmentation,
noise_step, aug_seed, generation_key, engine, chosen_tokens, rejected_tokens. The schema carries
`datasets` features, so `load_dataset("parquet", ...)` decodes `images` to PIL and DPOTrainer takes
the table unchanged. Also `seva_pairs.json`: SeVa's `{chosen, reject, question, image_id}` list.
"""

from __future__ import annotations

import io
import json
import logging
import random
import time
import unicodedata
from collections import Counter
from difflib import SequenceMatcher
from pathlib import Path
from typing import Literal

from pydantic import Field

from seva_tasks.artifacts import GENERATIONS, PAIRS, image_root
from seva_tasks.base import StageConfig
from seva_tasks.errors import InputError
from seva_tasks.progress import track

OUTPUT = PAIRS
SEVA_JSON = "seva_pairs.json"
log = logging.getLogger(__name__)


class FilterConfig(StageConfig):
    """Settings of the `filter` stage.

    Args: see each field's description. `mode: seva` reproduces SeVa; the default filters more.
    """

    mode: Literal["strict", "seva"] = Field("strict", description="'seva': exact-equal only, strip </s> and every newline (SeVa); 'strict': the filters below.")
    drop_empty: bool = Field(True, description="strict: drop a pair with an empty answer (after stripping whitespace).")
    drop_truncated: bool = Field(True, description="strict: drop a pair with an answer cut at max_new_tokens (finish reason 'length').")
    drop_normalized_equal: bool = Field(True, description="strict: drop a pair whose answers are equal after lower-casing and removing punctuation and extra whitespace.")
    near_duplicate: float | None = Field(None, gt=0.0, le=1.0, description="strict: drop a pair whose normalized answers' word-level similarity (difflib ratio) is at least this; None = off.")
    images: Literal["padded", "original", "path"] = Field("padded", description="Image in the Parquet: padded to a square with pad_color as LLaVA-1.5 does (PNG), the original file's bytes, or only its absolute path.")
    pad_color: tuple[int, int, int] = Field((122, 116, 104), description="Pad colour for images='padded' (CLIP's mean x 255, LLaVA's expand2square).")
    max_pairs: dict[str, int] = Field(default_factory=dict, description="Subset -> keep at most this many pairs, drawn with `seed` (SeVa, step 800: ocr_vqa 4300, textvqa 6500).")
    seed: int = Field(0, description="Seed of the max_pairs draw (SeVa's random.sample was unseeded).")


class _PunctToSpace(dict):
    """A `str.translate` table mapping every Unicode punctuation character to a space (filled lazily)."""

    def __missing__(self, cp: int):
        self[cp] = " " if unicodedata.category(chr(cp)).startswith("P") else cp
        return self[cp]


_PUNCT_TABLE = _PunctToSpace()


def normalize(text: str) -> str:
    """Lower-case, punctuation to spaces, whitespace collapsed."""
    return " ".join(text.lower().translate(_PUNCT_TABLE).split())


def seva_raw(text: str, finish: str) -> str:
    """SeVa's answer string: `tokenizer.decode(ids).strip()` keeps `</s>` when the answer ended at EOS."""
    return (text + ("</s>" if finish == "stop" else "")).strip()


def seva_clean(raw: str) -> str:
    return raw.replace("</s>", "").replace("\n", "")


def drop_reason(c: str, r: str, c_finish: str, r_finish: str, cfg: FilterConfig) -> str | None:
    """Why this pair goes, or None; `c`, `r` are the stripped answers (strict mode)."""
    if cfg.drop_empty and (not c or not r):
        return "empty_answer"
    if cfg.drop_truncated and "length" in (c_finish, r_finish):
        return "truncated"
    if c == r:
        return "exact_equal"
    nc, nr = normalize(c), normalize(r)
    if cfg.drop_normalized_equal and nc == nr:
        return "equal_normalized"
    if cfg.near_duplicate is not None and SequenceMatcher(None, nc.split(), nr.split(), autojunk=False).ratio() >= cfg.near_duplicate:
        return "near_duplicate"
    return None


def _filter(df, cfg: FilterConfig) -> tuple[list[int], list[str], list[str], Counter]:
    """Kept row indices with their final (chosen, rejected) texts, and drops by reason."""
    drops: Counter = Counter()
    keep, chosen, rejected = [], [], []
    cols = zip(df["chosen"], df["rejected"], df["chosen_finish"], df["rejected_finish"])
    for i, (c, r, cf, rf) in enumerate(track(list(cols), desc="filter: pairs", every=1000)):
        if cfg.mode == "seva":
            c, r = seva_raw(c, cf), seva_raw(r, rf)
            why = "exact_equal" if c == r else None
            c, r = seva_clean(c), seva_clean(r)
        else:
            c, r = c.strip(), r.strip()
            why = drop_reason(c, r, cf, rf, cfg)
        if why:
            drops[why] += 1
        else:
            keep.append(i)
            chosen.append(c)
            rejected.append(r)
    return keep, chosen, rejected, drops


def _downsample(df, cfg: FilterConfig, drops: Counter):
    """At most max_pairs[subset] rows per subset, a seeded draw kept in row order."""
    import polars as pl

    if not cfg.max_pairs:
        return df
    df = df.with_row_index("_i")
    keep = []
    for subset, n in sorted(cfg.max_pairs.items()):
        idx = df.filter(pl.col("subset") == subset)["_i"].to_list()
        if len(idx) > n:
            drops["downsampled"] += len(idx) - n
            idx = random.Random(f"{cfg.seed}:{subset}").sample(idx, n)
        keep += idx
    rest = df.filter(~pl.col("subset").is_in(list(cfg.max_pairs)))["_i"].to_list()
    return df.filter(pl.col("_i").is_in(sorted(keep + rest))).drop("_i")


def _image_cell(path: Path, cfg: FilterConfig) -> dict:
    """One `images` element: {bytes, path} for datasets' Image feature."""
    if cfg.images == "path":
        return {"bytes": None, "path": str(path)}
    if cfg.images == "original":
        return {"bytes": path.read_bytes(), "path": path.name}
    from seva_tasks.llava.images import expand2square, load_rgb

    buf = io.BytesIO()
    expand2square(load_rgb(path), tuple(cfg.pad_color)).save(buf, format="PNG", compress_level=6)
    return {"bytes": buf.getvalue(), "path": path.with_suffix(".png").name}


def _write(df, path: Path) -> None:
    """Parquet with `datasets` features in the schema metadata, so `images` decode to PIL there."""
    import pyarrow.parquet as pq
    from datasets import Features, Image, List, Value

    table = df.to_arrow()
    turn = List({"role": Value("string"), "content": Value("string")})
    features = Features({**Features.from_arrow_schema(table.schema),
                         "images": List(Image()), "prompt": turn, "chosen": turn, "rejected": turn})
    table = table.cast(features.arrow_schema)
    meta = {b"huggingface": json.dumps({"info": {"features": features.to_dict()}}).encode()}
    pq.write_table(table.replace_schema_metadata(meta), path, compression="zstd")


def run(cfg: FilterConfig, inputs: dict[str, Path], out_dir: Path) -> dict:
    """Filter the generated pairs and write `pairs.parquet` (TRL vision format) and `seva_pairs.json`.

    Args:
        cfg: the stage config. inputs: {"generate": the generate artifact dir}. out_dir: where to write.
    Returns:
        Manifest stats: counts (pairs in, kept, per subset), drops (reason -> pairs), mean lengths, seconds.
    """
    import polars as pl

    t0 = time.perf_counter()
    gen_dir = Path(inputs["generate"])
    try:
        df = pl.read_parquet(gen_dir / GENERATIONS)
        root = image_root(gen_dir)
    except (OSError, ValueError, pl.exceptions.PolarsError) as e:
        raise InputError(f"{gen_dir}: cannot read the generate output ({e}). Rerun `seva run --until generate`.") from e
    if root is None:
        raise InputError(f"{gen_dir}: its manifest records no image_root. Rerun `seva run --until generate`.")
    keep, chosen, rejected, drops = _filter(df, cfg)
    kept = df[keep].with_columns(chosen=pl.Series(chosen, dtype=pl.String), rejected=pl.Series(rejected, dtype=pl.String))
    kept = _downsample(kept, cfg, drops)
    images = [[_image_cell(root / rel, cfg)] for rel in track(kept["image"].to_list(), desc="filter: images", every=200)]
    turn = lambda role, col: pl.concat_list(pl.struct(role=pl.lit(role), content=pl.col(col)))  # noqa: E731
    pairs = kept.select(
        pl.Series("images", images, dtype=pl.List(pl.Struct({"bytes": pl.Binary, "path": pl.String}))),
        turn("user", "question").alias("prompt"), turn("assistant", "chosen").alias("chosen"),
        turn("assistant", "rejected").alias("rejected"),
        "id", "subset", "question", pl.col("image").alias("image_file"), "augmentation", "noise_step", "aug_seed",
        pl.lit(gen_dir.name).alias("generation_key"), "engine", "chosen_tokens", "rejected_tokens",
    )
    _write(pairs, out_dir / OUTPUT)
    seva = [{"chosen": c, "reject": r, "question": q, "image_id": Path(img).stem + ".jpg"}
            for c, r, q, img in kept.select("chosen", "rejected", "question", "image").iter_rows()]
    (out_dir / SEVA_JSON).write_text(json.dumps(seva))
    counts = {"pairs_in": df.height, "kept": pairs.height,
              **{f"kept:{s}": n for s, n in pairs.group_by("subset").len().sort("subset").iter_rows()}}
    lengths = {f"mean_{side}_{unit}": round(float(v), 2) if v is not None else None for side in ("chosen", "rejected")
               for unit, v in (("chars", kept[side].str.len_chars().mean()), ("tokens", kept[f"{side}_tokens"].mean()))}
    log.info("Kept %s/%s pairs (%s) → %s", f"{pairs.height:,}", f"{df.height:,}",
             ", ".join(f"{k} {v}" for k, v in sorted(drops.items())) or "nothing dropped", out_dir / OUTPUT)
    return {"counts": counts, "drops": dict(sorted(drops.items())), "mode": cfg.mode, "lengths": lengths,
            "seconds": {"total": round(time.perf_counter() - t0, 3)}}


def inspect_pairs(path: Path | str, rows: int = 5) -> str:
    """`seva inspect pairs`: a preview of `pairs.parquet` (a file or the filter artifact dir) and its counts."""
    import polars as pl

    path = Path(path)
    file = path / OUTPUT if path.is_dir() else path
    if not file.is_file():
        raise InputError(f"{file}: no pairs file. Run `seva run --until filter` first.")
    df = pl.read_parquet(file)
    manifest = file.parent / "manifest.json"
    stats = json.loads(manifest.read_text()).get("stats", {}) if manifest.is_file() else {}
    text = lambda col: pl.col(col).list.first().struct.field("content").alias(col)  # noqa: E731
    preview = df.select("id", "subset", text("prompt"), text("chosen"), text("rejected"))
    drops = stats.get("drops", {})
    lines = [f"{file}", "", str(preview.head(rows)), "",
             f"pairs kept: {df.height:,}" + (f" of {stats['counts']['pairs_in']:,}" if "counts" in stats else ""),
             "dropped: " + (", ".join(f"{k} {v:,}" for k, v in sorted(drops.items())) or "none"),
             *(f"  {k}: {n:,}" for k, n in df.group_by("subset").len().sort("subset").iter_rows()),
             f"mean length (chars): chosen {preview['chosen'].str.len_chars().mean() or 0:.1f}, "
             f"rejected {preview['rejected'].str.len_chars().mean() or 0:.1f}",
             f"mean length (tokens): chosen {df['chosen_tokens'].mean() or 0:.1f}, rejected {df['rejected_tokens'].mean() or 0:.1f}"]
    return "\n".join(lines)
