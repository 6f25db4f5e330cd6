"""Stage `generate`: each augmented row's question answered on the clean image (chosen) and on the
augmented one (rejected) -> `generations.parquet`.

    seva run --until generate                             # this stage and everything before it
    seva run --until generate generate.engine=hf          # the transformers reference engine

SeVa (`data/step2/generate_with_aug.py`): llava-1.5-7b, `llava_v1` template, prompt `<image>\\n{q}`,
greedy, 512 new tokens, one image per prompt, chosen = clean, rejected = noised (exact mode: noise on
the CLIP-normalized pad-to-square tensor; here rebuilt from the row's `noise_step` + `aug_seed`).

Requests (2 per row) are cut into shards of `shard_size` and answered by worker processes
(`python -m seva_tasks.engines.vllm_worker`, under the engine env's interpreter), which publish
each finished shard atomically into `_shards/` of this stage's partial dir. The stage is RESUMABLE:
after a crash (kill -9 of the worker or of the flow) a rerun redoes only unfinished shards, and the
output is byte-identical to an uninterrupted run. `_shards/` is removed once the output is written.

Output columns: the augmented row's columns, prompt, chosen, rejected, {chosen,rejected}_finish
("stop" | "length"), _truncated, _tokens, _token_ids, prompt_tokens, engine, model, conv_template.
Rows whose either side failed (prompt too long, image unreadable, engine rejected) are in
`unanswered.parquet` (id, side, reason, detail) and counted in the manifest, never given an empty answer.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from pydantic import Field

from seva_tasks.artifacts import AUGMENTED, GENERATIONS, image_root
from seva_tasks.base import resolve
from seva_tasks.engines import EngineConfig
from seva_tasks.llava.prompts import Template
from seva_tasks.errors import InputError, StageError
from seva_tasks.progress import report

VERSION = 1
DEPS = ("augment",)
RESUMABLE = True
OUTPUT = GENERATIONS
DROPPED = "unanswered.parquet"  # sorts after generations.parquet (the flow previews the first)
WORK = "_shards"
SIDES = ("chosen", "rejected")
log = logging.getLogger(__name__)


class GenerateConfig(EngineConfig):
    """Settings of the `generate` stage: the engine's (EngineConfig) plus prompt and sharding.

    Args: see each field's description. Defaults are the paper's (llava-1.5-7b, llava_v1, greedy, 512).
    """

    conv_template: Template = Field("llava_v1", description="Prompt: LLaVA's 'llava_v1' (SeVa's generation) or 'vicuna_v1' strings verbatim, or the model's 'chat_template'.")
    shard_size: int = Field(1024, ge=1, description="Requests (2 per row) per shard: the unit of resume and of parallelism.")
    gpus: list[str] = Field(default_factory=list, description="GPU ids; one worker per tensor_parallel_size of them (empty: one worker, inherited devices).")
    python: Path | None = Field(None, description="Worker interpreter; default .venv-vllm/bin/python for vllm, this interpreter for hf.")
    image_root: Path | None = Field(None, description="Root of the rows' clean `image` paths; default: the one the sample stage used.")


def fingerprint(cfg: GenerateConfig) -> dict:
    """Identity of the model directory (sizes + mtimes of its files): new weights mean new answers."""
    root = resolve(cfg.model)
    try:
        return {"model": {p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in sorted(root.iterdir()) if p.is_file()}}
    except OSError:
        return {"model": None}


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


def _write_shards(reqs: list[dict], work: Path, size: int) -> list[dict]:
    """Request shards under `work/requests/`; jobs for the worker (result paths under `work/results/`)."""
    from seva_tasks.engines.shards import write_requests

    (work / "requests").mkdir(parents=True, exist_ok=True)
    (work / "results").mkdir(exist_ok=True)
    jobs = []
    for i, lo in enumerate(range(0, len(reqs), size)):
        name = f"shard-{i:05d}"
        path = work / "requests" / f"{name}.parquet"
        write_requests(reqs[lo : lo + size], path)
        jobs.append({"shard": name, "requests": str(path), "results": str(work / "results" / f"{name}.parquet")})
    return jobs


def _interpreter(cfg: GenerateConfig) -> Path:
    if cfg.python is not None:
        return resolve(cfg.python)
    return resolve(".venv-vllm/bin/python") if cfg.engine == "vllm" else Path(sys.executable)


def _launch(cfg: GenerateConfig, jobs: list[dict], embeds: bool, work: Path, n: int, devices: list[str] | None):
    """Start worker `n` on its jobs; returns (Popen, log path)."""
    from seva_tasks.engines.vllm_worker import worker_env

    python = _interpreter(cfg)
    if not python.is_file():
        raise StageError(f"No engine interpreter at {python} (engine '{cfg.engine}'). Create the engine env "
                         f"(`make setup`) or set generate.python, then rerun `seva run --until generate`.")
    engine = EngineConfig.model_validate({k: getattr(cfg, k) for k in EngineConfig.model_fields}).model_dump(mode="json")
    engine["model"] = str(resolve(cfg.model))
    spec = work / f"worker-{n}.json"
    spec.write_text(json.dumps({"engine": engine, "embeds": embeds, "jobs": jobs}, indent=1))
    env = worker_env(os.environ, cfg)
    env["SEVA_PARENT_PID"] = str(os.getpid())  # the worker exits if this process dies (no orphans)
    if devices is not None:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(devices)
    log_path = work / f"worker-{n}.log"
    with open(log_path, "ab") as logf:
        proc = subprocess.Popen([str(python), "-m", "seva_tasks.engines.vllm_worker", str(spec)], stdout=logf,
                                stderr=subprocess.STDOUT, env=env, cwd=str(resolve(".")))
    (work / f"worker-{n}.pid").write_text(f"{proc.pid}\n")
    return proc, log_path


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n    ".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _run_workers(cfg: GenerateConfig, jobs: list[dict], embeds: bool, work: Path) -> None:
    """Run the unfinished jobs on one worker per GPU group; StageError naming the shard on failure."""
    from seva_tasks.engines.shards import done

    todo = [j for j in jobs if done(Path(j["requests"]), Path(j["results"])) is None]
    if not todo:
        return
    for j in todo:  # a result made from other requests (older code) is stale
        Path(j["results"]).unlink(missing_ok=True)
    tp = cfg.tensor_parallel_size
    groups = [cfg.gpus[i : i + tp] for i in range(0, len(cfg.gpus) - tp + 1, tp)] or [None]
    procs = [(_launch(cfg, todo[i :: len(groups)], embeds, work, i, g), todo[i :: len(groups)]) for i, g in enumerate(groups)]
    total, finished = len(jobs), len(jobs) - len(todo)
    while True:
        running = [p for (p, _), _ in procs if p.poll() is None]
        now = finished + sum(1 for j in todo if Path(j["results"]).exists())
        report("generate: shards", now, total)
        if not running:
            break
        time.sleep(1.0)
    failures = []
    for (proc, log_path), mine in procs:
        left = [j["shard"] for j in mine if done(Path(j["requests"]), Path(j["results"])) is None]
        if proc.returncode != 0 or left:
            rc = proc.returncode
            how = f"was killed by signal {-rc}" if rc < 0 else f"exited with code {rc}"
            failures.append(f"worker {proc.pid} {how} while on shard {left[0] if left else '?'} "
                            f"({len(mine) - len(left)}/{len(mine)} of its shards done); last lines of {log_path}:\n    {_tail(log_path)}")
    if failures:
        raise StageError("Generation failed: " + "\n".join(failures) +
                         "\nFinished shards are kept; fix the cause and rerun `seva run --until generate` to resume.")


def _assemble(df, jobs: list[dict], cfg: GenerateConfig):
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
    return out.with_columns(engine=pl.lit(cfg.engine), model=pl.lit(str(cfg.model)), conv_template=pl.lit(cfg.conv_template)), dropped


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
        cfg: the stage config. inputs: {"augment": the augment artifact dir}. out_dir: where to write
            (the store's resumable partial dir: finished shards from an earlier attempt are reused).
    Returns:
        Manifest stats: counts, drops (reason -> rows), shards (per shard rows/tokens/seconds), totals,
        shards_run / shards_reused, image_root, seconds.
    """
    import polars as pl

    from seva_tasks.llava.prompts import prompt_builder

    t0 = time.perf_counter()
    aug_dir = Path(inputs["augment"])
    try:
        df = pl.read_parquet(aug_dir / AUGMENTED)
    except (OSError, pl.exceptions.PolarsError) as e:
        raise InputError(f"{aug_dir / AUGMENTED}: cannot read the augment output ({e}). "
                         "Rerun `seva run --until augment --refresh augment`.") from e
    if not resolve(cfg.model).is_dir():
        raise InputError(f"{resolve(cfg.model)}: no model directory. Set generate.model to a local llava-hf "
                         "checkpoint and rerun `seva run --until generate`.")
    root = _image_root(cfg, aug_dir)
    build = prompt_builder(cfg.conv_template, resolve(cfg.model))
    df = df.with_columns(prompt=pl.Series([build(q) for q in df["question"]], dtype=pl.String))
    reqs = _requests(df, aug_dir, root)
    work = out_dir / WORK
    jobs = _write_shards(reqs, work, cfg.shard_size)
    from seva_tasks.engines.shards import done

    reused = sum(1 for j in jobs if done(Path(j["requests"]), Path(j["results"])) is not None)
    log.info("Generating %s answers in %d shards with %s (%d shards already done) → %s",
             f"{len(reqs):,}", len(jobs), cfg.engine, reused, work)
    t1 = time.perf_counter()
    _run_workers(cfg, jobs, any(r["noise_step"] is not None for r in reqs), work)
    t2 = time.perf_counter()
    out, dropped = _assemble(df, jobs, cfg)
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
        "shards": per, "totals": tot, "image_root": str(root), "engine": cfg.engine,
        "seconds": {"prepare": round(t1 - t0, 3), "generate": round(t2 - t1, 3), "write": round(time.perf_counter() - t2, 3)},
    }
