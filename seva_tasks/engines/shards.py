"""The shard runner: request shard (Parquet) -> result shard (Parquet), wherever it runs.

`run_shard(request_path, result_path, engine_cfg)` is the unit a local worker process, a GPU per
worker, or a Ray task calls; it touches only its two paths. A result is published atomically
(temp file + fsync + rename) and records the sha256 of the request file it answers, so a result
counts as done only for the exact requests it was made from (`done(...)`).

Per row, never a silent empty answer: a prompt longer than `max_model_len` (text + image tokens) or
an input the engine rejects gets `error` = "<reason>: <detail>" and no text; the stage drops and
counts it. A whole-batch failure of a per-row kind (the engine's `row_errors`) is split in halves
until the failing rows are isolated. Anything else (OOM, a crash) propagates: the worker exits
nonzero and the stage names the shard.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from seva_tasks.engines import Engine, EngineConfig, Output, Request, WorkerSpec, make_engine
from seva_tasks.store import file_sha256, write_atomic

log = logging.getLogger(__name__)
META_KEY = b"seva"


def _schemas():
    import pyarrow as pa

    requests = pa.schema([("req_id", pa.string()), ("prompt", pa.string()), ("image", pa.string()),
                          ("noise_step", pa.int32()), ("aug_seed", pa.int64())])
    results = pa.schema([("req_id", pa.string()), ("text", pa.string()), ("token_ids", pa.list_(pa.int32())),
                         ("finish_reason", pa.string()), ("prompt_tokens", pa.int32()), ("gen_tokens", pa.int32()),
                         ("error", pa.string()),
                         ("first_logprobs", pa.list_(pa.struct([("text", pa.string()), ("logprob", pa.float64())])))])
    return requests, results


def _write_atomic(table, path: Path) -> None:
    import pyarrow.parquet as pq

    write_atomic(path, lambda tmp: pq.write_table(table, tmp, compression="zstd"))


def write_requests(rows: list[dict], path: Path) -> None:
    """A request shard from dicts with the Request fields (bytes depend only on the rows)."""
    import pyarrow as pa

    schema, _ = _schemas()
    _write_atomic(pa.Table.from_pylist(rows, schema=schema), path)


def read_requests(path: Path) -> list[Request]:
    import pyarrow.parquet as pq

    return [Request(**row) for row in pq.read_table(path).to_pylist()]


def done(request_path: Path, result_path: Path) -> dict | None:
    """The stats of a published result made from exactly this request file, else None."""
    import pyarrow.parquet as pq

    try:
        meta = json.loads(pq.read_schema(result_path).metadata[META_KEY])
    except (OSError, KeyError, TypeError, ValueError):
        return None
    return meta["stats"] if meta.get("request_sha256") == file_sha256(request_path) else None


def _checked(engine: Engine, reqs: list[Request], max_model_len: int) -> list[Output]:
    """Length-check every row, generate the rest; answers in request order."""
    out: dict[str, Output] = {}
    ok = []
    for r in reqs:
        n = engine.prompt_tokens(r.prompt, r.image)
        if n >= max_model_len:
            out[r.req_id] = Output(r.req_id, prompt_tokens=n,
                                   error=f"prompt_too_long: {n} prompt tokens >= max_model_len {max_model_len}")
        else:
            ok.append(r)
    answers = _split(engine, ok)
    if len(answers) > 1 and all(o.error for o in answers):  # every row "bad": the engine is, not the rows
        raise RuntimeError(f"every one of {len(answers)} requests failed, e.g. {answers[0].req_id}: {answers[0].error}")
    for o in answers:
        out[o.req_id] = o
    return [out[r.req_id] for r in reqs]


def _split(engine: Engine, reqs: list[Request]) -> list[Output]:
    """Generate; on a per-row kind of error, halve the batch until the bad rows stand alone."""
    if not reqs:
        return []
    try:
        return engine.generate(reqs)
    except getattr(engine, "row_errors", ()) as e:
        if len(reqs) == 1:
            reason = "image_unreadable" if isinstance(e, OSError) else "engine_rejected"
            log.warning("Dropping request %s: %s: %s", reqs[0].req_id, reason, e)
            return [Output(reqs[0].req_id, error=f"{reason}: {type(e).__name__}: {e}"[:2000])]
        mid = len(reqs) // 2
        return _split(engine, reqs[:mid]) + _split(engine, reqs[mid:])


def run_shard(request_path: Path, result_path: Path, engine_cfg: EngineConfig, engine: Engine | None = None) -> dict:
    """Answer one request shard into `result_path` (atomically); return its stats.

    Args:
        request_path: a shard written by `write_requests`. result_path: where the result goes.
        engine_cfg: the engine settings (a WorkerSpec when `engine` is None: one is loaded from it).
    Returns:
        rows, answered, dropped, prompt_tokens, gen_tokens, seconds, gen_tokens_per_s.
    """
    import pyarrow as pa

    reqs = read_requests(request_path)
    if engine is None:
        engine = make_engine(engine_cfg, embeds=any(r.noise_step is not None for r in reqs))
    t0 = time.perf_counter()
    outs = _checked(engine, reqs, engine_cfg.max_model_len)
    seconds = time.perf_counter() - t0
    answered = [o for o in outs if o.error is None]
    gen = sum(len(o.token_ids) for o in answered)
    stats = {"rows": len(reqs), "answered": len(answered), "dropped": len(outs) - len(answered),
             "prompt_tokens": sum(o.prompt_tokens for o in answered), "gen_tokens": gen,
             "seconds": round(seconds, 3), "gen_tokens_per_s": round(gen / seconds, 2) if seconds > 0 else None}
    _, schema = _schemas()
    rows = [{"req_id": o.req_id, "text": o.text, "token_ids": o.token_ids, "finish_reason": o.finish_reason,
             "prompt_tokens": o.prompt_tokens, "gen_tokens": len(o.token_ids), "error": o.error,
             "first_logprobs": [{"text": t, "logprob": lp} for t, lp in o.first_logprobs]} for o in outs]
    meta = {"request_sha256": file_sha256(request_path), "stats": stats, "engine": engine_cfg.kind}
    table = pa.Table.from_pylist(rows, schema=schema).replace_schema_metadata({META_KEY: json.dumps(meta)})
    _write_atomic(table, result_path)
    return stats


def run_shards(jobs: list[dict], engine_cfg: WorkerSpec, *, embeds: bool = False) -> list[dict]:
    """Run every unfinished job ({"shard", "requests", "results"}) with one engine, in order."""
    todo = [j for j in jobs if done(Path(j["requests"]), Path(j["results"])) is None]
    log.info("%d of %d shards to generate (%d already done)", len(todo), len(jobs), len(jobs) - len(todo))
    if not todo:
        return []
    t0 = time.perf_counter()
    engine = make_engine(engine_cfg, embeds=embeds)
    log.info("Engine %s loaded in %.1f s", engine_cfg.kind, time.perf_counter() - t0)
    stats = []
    for job in todo:
        s = run_shard(Path(job["requests"]), Path(job["results"]), engine_cfg, engine)
        log.info("Shard %s: %d rows, %d dropped, %d tokens in %.1f s → %s", job["shard"], s["rows"], s["dropped"],
                 s["gen_tokens"], s["seconds"], job["results"])
        stats.append(s)
    return stats
