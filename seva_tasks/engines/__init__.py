"""Generation engines: one interface, two implementations, run shard by shard in a worker process.

    vllm  seva_tasks/engines/vllm_worker.py   vllm.LLM(...).generate, large batches (default)
    hf    seva_tasks/engines/hf.py            transformers generate; batch 1 is SeVa's own path

`shards.run_shards(jobs, spec)` loads one engine and turns request shards (Parquet) into result shards;
`python -m seva_tasks.engines.vllm_worker SPEC.json` runs it under the engine env's interpreter, and
`pool.run_workers` starts those processes (one per GPU group) and waits for them; with
`backend: ray` it starts one driver instead (`python -m seva_tasks.engines.ray_driver SPEC.json`),
which hands the same shards to engine actors on a Ray cluster (engines/ray_driver.py).
This package is imported by that interpreter too, so it imports only what `.venv-vllm` has:
pydantic, pyarrow, numpy, PIL, torch, transformers (never polars, prefect, diffusers, torchvision).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import Field, model_validator

from seva_tasks.base import StageConfig


class EngineConfig(StageConfig):
    """How answers are generated: `generate.engine.*` and `evaluate.engine.*` (the model is an input, not a setting).

    Args: see each field's description. Defaults are the paper's (greedy decoding, one worker).
    """

    kind: Literal["vllm", "hf"] = Field("vllm", description="'vllm' (batched multimodal engine, default) or 'hf' (transformers generate, the reference).")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field("auto", description="Weights/activations dtype (paper: float16; float32 for exact vLLM/HF agreement).")
    temperature: float = Field(0.0, ge=0.0, description="0 = greedy (paper); > 0 samples, seeded by `seed`.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass (ignored when greedy).")
    seed: int = Field(0, description="Sampling seed (greedy decoding does not use it).")
    max_model_len: int = Field(2048, ge=16, description="Context length: prompt (text + image tokens) + answer. Longer prompts are dropped per row.")
    vision_device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Exact-noise mode: where the vision tower + projector embed the noised images ('auto': the GPU if torch sees one; on the CPU always float32).")
    pad_to_square: bool = Field(True, description="LLaVA-1.5's `image_aspect_ratio=pad`: pad with the mean colour, then resize (else the processor's resize+crop).")
    logprobs: int = Field(0, ge=0, le=20, description="Top-k log-probabilities of each answer's first token, kept with the answer (vLLM's SamplingParams.logprobs; hf: the first step's logits). POPE scores them as the AUROC of p(yes). 0: none.")
    batch_size: int = Field(1, ge=1, description="hf only: rows per generate call (1 = SeVa's path; >1 pads left).")
    kv_cache_memory_bytes: int | None = Field(None, ge=1, description="vllm: KV-cache bytes. Required on CPU (else vLLM asks for 92% of RAM); None on GPUs uses gpu_memory_utilization.")
    gpu_memory_utilization: float = Field(0.9, gt=0.0, le=1.0, description="vllm on GPUs: fraction of device memory for weights + KV cache.")
    tensor_parallel_size: int = Field(1, ge=1, description="vllm: GPUs per engine (one worker process per group).")
    max_num_seqs: int | None = Field(None, ge=1, description="vllm: sequences decoded together at most (None: vLLM's default).")
    trust_remote_code: bool = Field(False, description="Allow model code from the model directory (off: llava-hf needs none).")
    vllm_args: dict[str, Any] = Field(default_factory=dict, description="Extra keyword arguments for vllm.LLM (e.g. enforce_eager: true).")
    gpus: list[str] = Field(default_factory=list, description="GPU ids; one worker per tensor_parallel_size of them (empty: one worker, inherited devices).")
    python: Path | None = Field(None, description="Worker interpreter; default .venv-vllm/bin/python for vllm (and for any engine on Ray), this interpreter for hf.")
    backend: Literal["local", "ray"] = Field("local", description="Where the shards run: 'local' worker processes on this machine, or 'ray' actors on a Ray cluster (same shard files, resume and output bytes).")
    ray_address: str = Field("auto", description="ray: the cluster: 'auto' (the one `ray start` made on this node, or RAY_ADDRESS), 'HOST:6379' (its GCS), 'ray://HOST:10001' (Ray Client), or 'local' (a one-node Ray started for this run).")
    ray_actors: int | None = Field(None, ge=1, description="ray: engine actors (None: the cluster's GPUs / tensor_parallel_size, or one per node on a CPU cluster).")
    ray_retries: int = Field(1, ge=0, description="ray: restarts of an actor that dies mid-shard, its shard then retried (0: the run fails; a rerun redoes only unfinished shards).")

    @model_validator(mode="after")
    def _ray_places_gpus(self) -> EngineConfig:
        if self.backend == "ray" and self.gpus:
            raise ValueError(f"engine.gpus={self.gpus} with engine.backend=ray: Ray gives each actor tensor_parallel_size "
                             "GPUs of its node itself. Set engine.gpus=[] (or backend=local).")
        return self


class WorkerSpec(EngineConfig):
    """What one worker loads: the engine settings plus the model it was handed and the answer budget."""

    model: Path = Field(description="Local model directory in llava-hf format (never a hub id: runs are offline).")
    max_new_tokens: int = Field(ge=1, description="Generated tokens per answer at most.")


@dataclass
class Request:
    """One prompt + one image: a file to feed as is, or SeVa's exact noise to apply to its pixels."""

    req_id: str
    prompt: str
    image: str  # absolute path
    noise_step: int | None = None  # exact mode: x_t of the CLIP-normalized tensor (seva_tasks.augment)
    aug_seed: int | None = None


@dataclass
class Output:
    """One answer. `error` set means no answer (the row is dropped with that reason, never left empty)."""

    req_id: str
    text: str | None = None
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None  # "stop" (EOS or stop string) | "length" (hit max_new_tokens / max_model_len)
    prompt_tokens: int = 0
    error: str | None = None
    # the first token's top-k alternatives, most likely first: [(decoded text, log-probability)] (engine.logprobs)
    first_logprobs: list[tuple[str, float]] = field(default_factory=list)


class Engine(Protocol):
    """What the shard runner needs from an engine."""

    def prompt_tokens(self, prompt: str, image: str | None = None) -> int:
        """Tokens the prompt occupies, image placeholders expanded as for `image` (for the per-row length check)."""

    def generate(self, requests: list[Request]) -> list[Output]:
        """Answers in request order; may raise for a whole batch (the runner then splits it)."""


def answer_text(tokenizer, token_ids: list[int]) -> str:
    """The answer as text: its ids decoded in one piece, special tokens (EOS) dropped. Both engines
    use it, so the same tokens give the same text (vLLM's incremental detokenizer keeps a leading
    `▁` as a space and renders stray UTF-8 bytes differently)."""
    return tokenizer.decode(token_ids, skip_special_tokens=True)


def top_logprobs(tokenizer, logprobs: dict[int, float], k: int) -> list[tuple[str, float]]:
    """The `k` likeliest first tokens as (decoded text, log-probability), most likely first; both engines use it."""
    best = sorted(logprobs.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
    return [(tokenizer.decode([t]), float(lp)) for t, lp in best]


def make_engine(cfg: WorkerSpec, *, embeds: bool = False) -> Engine:
    """Load the engine named by `cfg.kind` (`embeds`: some requests need exact-noise embeddings)."""
    if cfg.kind == "vllm":
        from seva_tasks.engines.vllm_worker import VllmEngine

        return VllmEngine(cfg, embeds=embeds)
    from seva_tasks.engines.hf import HFEngine

    return HFEngine(cfg)
