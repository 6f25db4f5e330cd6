"""Stage `generate`: each augmented row's question answered on the clean image (chosen) and on the
augmented one (rejected) -> `generations.parquet`.

    seva run --until generate                             # this stage and everything before it
    seva run --until generate generate.engine.kind=hf     # the transformers reference engine

SeVa (`data/step2/generate_with_aug.py`): llava-1.5-7b, `llava_v1` template, prompt `<image>\\n{q}`,
greedy, 512 new tokens, one image per prompt, chosen = clean, rejected = noised (exact mode: noise on
the CLIP-normalized pad-to-square tensor; here rebuilt from the row's `noise_step` + `aug_seed`).

The model is `inputs["model"]`: the run's model (the preset's `model:` or pretrain's output).
Requests (2 per row) are cut into shards of `shard_size` and answered by worker processes
(seva_tasks/engines/pool.py: `python -m seva_tasks.engines.vllm_worker` under the engine env), which publish
each finished shard atomically into `_shards/` of this stage's partial dir. The stage is resumable:
after a crash (kill -9 of the worker or of the flow) a rerun redoes only unfinished shards, and the
output is byte-identical to an uninterrupted run. `_shards/` is removed once the output is written.

Output columns: the augmented row's columns, prompt, chosen, rejected, {chosen,rejected}_finish
("stop" | "length"), _truncated, _tokens, _token_ids, prompt_tokens, engine, model, conv_template.
`model` is the model's content fingerprint (the manifest's `model.fingerprint`; its path is in the manifest):
the stage's key counts the model by content, so its output may not depend on where the model lies (a store
built cold and one built over time would otherwise hold different bytes under one key).
Rows whose either side failed (prompt too long, image unreadable, engine rejected) are in
`unanswered.parquet` (id, side, reason, detail) and counted in the manifest, never given an empty answer.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections import Counter
from pathlib import Path

from pydantic import Field

from seva_tasks.artifacts import AUGMENTED, GENERATIONS, image_root
from seva_tasks.base import StageConfig, resolve
from seva_tasks.engines import EngineConfig
from seva_tasks.errors import InputError
from seva_tasks.family import check_template
from seva_tasks.fingerprint import fingerprint as fingerprint_path  # not `fingerprint`: that name is the stage hook (pipeline.Stage)
from seva_tasks.llava.prompts import Template

OUTPUT = GENERATIONS
DROPPED = "unanswered.parquet"  # sorts after generations.parquet (the flow previews the first)
WORK = "_shards"
SIDES = ("chosen", "rejected")
log = logging.getLogger(__name__)


class GenerateConfig(StageConfig):
    """Settings of the `generate` stage: the engine (`generate.engine.*`), prompt, budget and sharding.

    The model is not a setting: it is the run's model (the preset's `model:` or pretrain's output),
    handed in as `inputs["model"]`. Args: see each field's description. Defaults are the paper's.
    """

    engine: EngineConfig = Field(default_factory=EngineConfig, description="How answers are generated (seva_tasks/engines).")
    conv_template: Template = Field("llava_v1", description="Prompt: LLaVA's 'llava_v1' (SeVa's generation) or 'vicuna_v1' strings verbatim, or the model's 'chat_template'.")
    max_new_tokens: int = Field(512, ge=1, description="Generated tokens per answer at most (paper: 512).")
    shard_size: int = Field(1024, ge=1, description="Requests (2 per row) per shard: the unit of resume and of parallelism.")
    image_root: Path | None = Field(None, description="Root of the rows' clean `image` paths; default: the one the sample stage used.")


def _image_root(cfg: GenerateConfig, aug_dir: Path) -> Path:
    """The clean images' root: configured, else the one augment's manifest records (from sample)."""
    if cfg.image_root is not None:
        return resolve(cfg.image_root)
    if (root := image_root(aug_dir)) is None:
        raise InputError(f"{aug_dir}: its manifest records no image_root. Set generate.image_root or rerun "
                         "`seva run --until augment --refresh augment`.")
    return root


def _requests(df, aug_dir: Path, root: Path) -> list[dict]:
    """Two requests per row, in row order: clean image, then the augmented PNG or exact-noise recipe."""
    out = []
    for r in df.iter_rows(named=True):
        prompt, clean = r["prompt"], str(root / r["image"])
        out.append({"req_id": f"{r['id']}#chosen", "prompt": prompt, "image": clean, "noise_step": None, "aug_seed": None})
        if r["aug_image"] is not None:
            out.append({"req_id": f"{r['id']}#rejected", "prompt": prompt, "image": str(aug_dir / r["aug_image"]),
                        "noise_step": None, "aug_seed": None})
        elif r["mode"] == "exact" and r["noise_step"] is not None:
            out.append({"req_id": f"{r['id']}#rejected", "prompt": prompt, "image": clean,
                        "noise_step": r["noise_step"], "aug_seed": r["aug_seed"]})
        else:
            raise InputError(f"{aug_dir}: row {r['id']} has neither aug_image nor an exact-noise recipe. "
                             "Rerun `seva run --until augment --refresh augment`.")
    return out


def _assemble(df, jobs: list[dict], cfg: GenerateConfig, model: Path):
    """Join the result shards onto the rows: (generations, dropped) DataFrames, in row order."""
    import polars as pl

    res = pl.concat([pl.read_parquet(j["results"]) for j in jobs], how="vertical")
    res = res.with_columns(id=pl.col("req_id").str.extract(r"^(.*)#(?:chosen|rejected)$"),
                           side=pl.col("req_id").str.extract(r"#(chosen|rejected)$"))
    bad = res.filter(pl.col("error").is_not_null())
    dropped = bad.select("id", "side", reason=pl.col("error").str.extract(r"^([a-z_]+):"), detail="error")
    out = df.filter(~pl.col("id").is_in(bad["id"].implode()))
    first = True
    for side in SIDES:
        part = res.filter(pl.col("side") == side).select(
            "id", pl.col("text").alias(side), pl.col("finish_reason").alias(f"{side}_finish"),
            (pl.col("finish_reason") == "length").alias(f"{side}_truncated"), pl.col("gen_tokens").alias(f"{side}_tokens"),
            pl.col("token_ids").alias(f"{side}_token_ids"),
            *([pl.col("prompt_tokens")] if first else []))
        out = out.join(part, on="id", how="left", maintain_order="left")
        first = False
    return out.with_columns(engine=pl.lit(cfg.engine.kind), model=pl.lit(fingerprint_path(model)), conv_template=pl.lit(cfg.conv_template)), dropped


def _shard_stats(jobs: list[dict]) -> tuple[list[dict], dict]:
    """Per-shard stats (from the result files) and their sums."""
    from seva_tasks.engines.shards import done

    per = [{"shard": j["shard"], **done(Path(j["requests"]), Path(j["results"]))} for j in jobs]
    tot = {k: sum(s[k] for s in per) for k in ("rows", "answered", "dropped", "prompt_tokens", "gen_tokens")}
    tot["seconds"] = round(sum(s["seconds"] for s in per), 3)
    tot["gen_tokens_per_s"] = round(tot["gen_tokens"] / tot["seconds"], 2) if tot["seconds"] else None
    return per, tot


def run(cfg: GenerateConfig, inputs: dict[str, Path], out_dir: Path) -> dict:
    """Answer every augmented row twice and write `out_dir/generations.parquet` (+ `unanswered.parquet`).

    Args:
        cfg: the stage config. inputs: {"augment": the augment artifact dir, "model": the model dir}. out_dir: where to write
            (the store's resumable partial dir: finished shards from an earlier attempt are reused).
    Returns:
        Manifest stats: counts, drops (reason -> rows), shards (per shard rows/tokens/seconds), totals,
        shards_run / shards_reused, image_root, seconds.
    """
    import polars as pl

    from seva_tasks.engines import pool
    from seva_tasks.llava.prompts import prompt_builder

    t0 = time.perf_counter()
    aug_dir = Path(inputs["augment"])
    try:
        df = pl.read_parquet(aug_dir / AUGMENTED)
    except (OSError, pl.exceptions.PolarsError) as e:
        raise InputError(f"{aug_dir / AUGMENTED}: cannot read the augment output ({e}). "
                         "Rerun `seva run --until augment --refresh augment`.") from e
    model = Path(inputs["model"])
    check_template(model, cfg.conv_template, "generate.conv_template")
    root = _image_root(cfg, aug_dir)
    build = prompt_builder(cfg.conv_template, model)
    df = df.with_columns(prompt=pl.Series([build(q) for q in df["question"]], dtype=pl.String))
    reqs = _requests(df, aug_dir, root)
    work = out_dir / WORK
    jobs = pool.write_shards(reqs, work, cfg.shard_size)
    reused = pool.finished(jobs)
    log.info("Generating %s answers in %d shards with %s on %s (%d shards already done) → %s",
             f"{len(reqs):,}", len(jobs), cfg.engine.kind, model, reused, work)
    t1 = time.perf_counter()
    pool.run_workers(cfg.engine, model, cfg.max_new_tokens, jobs, embeds=any(r["noise_step"] is not None for r in reqs),
                     work=work, desc="generate: shards")
    t2 = time.perf_counter()
    out, dropped = _assemble(df, jobs, cfg, model)
    out.write_parquet(out_dir / OUTPUT, compression="zstd")
    dropped.write_parquet(out_dir / DROPPED, compression="zstd")
    per, tot = _shard_stats(jobs)
    shutil.rmtree(work)
    drops = Counter(dropped.unique(subset=["id", "reason"])["reason"].to_list())  # rows, not sides
    log.info("Answered %s of %s rows (%s dropped: %s), %s tokens → %s", f"{out.height:,}", f"{df.height:,}",
             f"{df.height - out.height:,}", dict(drops) or "none", f"{tot['gen_tokens']:,}", out_dir / OUTPUT)
    return {
        "counts": {"rows_in": df.height, "rows": out.height, "requests": len(reqs), "shards": len(jobs),
                   "truncated:chosen": int(out["chosen_truncated"].sum()), "truncated:rejected": int(out["rejected_truncated"].sum())},
        "drops": dict(sorted(drops.items())),
        "shards_run": len(jobs) - reused, "shards_reused": reused,
        "shards": per, "totals": tot, "image_root": str(root), "engine": cfg.engine.kind,
        "seconds": {"prepare": round(t1 - t0, 3), "generate": round(t2 - t1, 3), "write": round(time.perf_counter() - t2, 3)},
    }
