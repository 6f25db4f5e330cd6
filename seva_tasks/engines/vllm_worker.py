"""Engine `vllm` and the generation worker process (also used for `hf`).

    .venv-vllm/bin/python -m seva_tasks.engines.vllm_worker SPEC.json

SPEC.json = {"engine": WorkerSpec fields (EngineConfig + model + max_new_tokens), "embeds": bool, "jobs": [{"shard", "requests", "results"}]}.
The worker loads the engine once (vLLM starts in 10-25 s on CPU) and runs the shards in order,
publishing each result shard atomically as it finishes; shards already finished are skipped. It is
started by `seva_tasks.generate` with the engine env's interpreter and the environment below.

On CPU (DESIGN §4): in-process engine (`VLLM_ENABLE_V1_MULTIPROCESSING=0`: 10-25 s / ~1.3 GiB instead
of 40 s / ~3 GiB), offline hub, explicit `kv_cache_memory_bytes`. vLLM 0.32's LLaVA module imports
transformers' Pixtral image processor, and its Qwen2-VL module the Qwen2-VL one; both need torchvision,
whose PyPI build does not import beside torch+cpu. `engines/_shim/sitecustomize.py` makes it importable
(or, in an env without torchvision, provides the one Pixtral helper LLaVA needs; see there). It is put
on PYTHONPATH only for this process and its children.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import signal
import sys
from pathlib import Path

from seva_tasks.base import resolve
from seva_tasks.engines import EngineConfig, Output, Request, WorkerSpec, answer_text, top_logprobs
from seva_tasks.engines.hf import request_seed
from seva_tasks.engines.vision import llava_encoder, qwen_encoder
from seva_tasks.llava.vision import ImagePrep, image_tokens
from seva_tasks.family import family
from seva_tasks.qwen2vl.images import ImageInputs

SHIM_DIR = Path(__file__).resolve().parent / "_shim"
ENCODER_BATCH = 32  # noised images through the vision tower per forward (bounded memory)
log = logging.getLogger(__name__)


def worker_env(base: dict[str, str], cfg: EngineConfig) -> dict[str, str]:
    """The environment a worker runs with: offline, in-process vLLM on CPU, the torchvision shim."""
    env = dict(base)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1",
               TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    if cfg.kind == "vllm":
        if cfg.tensor_parallel_size == 1:
            env.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        env["PYTHONPATH"] = str(SHIM_DIR) + (":" + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


class VllmEngine:
    """`vllm.LLM` over one model (LLaVA or Qwen2-VL family); clean images go in as PIL, exact-noise rows as embeddings."""

    def __init__(self, cfg: WorkerSpec, *, embeds: bool = False):
        from transformers import AutoConfig
        from vllm import LLM

        self.cfg = cfg
        path = resolve(cfg.model)
        kwargs = dict(model=str(path), dtype=cfg.dtype, max_model_len=cfg.max_model_len, seed=cfg.seed,
                      tensor_parallel_size=cfg.tensor_parallel_size, trust_remote_code=cfg.trust_remote_code,
                      gpu_memory_utilization=cfg.gpu_memory_utilization, limit_mm_per_prompt={"image": 1})
        if cfg.kv_cache_memory_bytes is not None:
            kwargs["kv_cache_memory_bytes"] = cfg.kv_cache_memory_bytes
        if cfg.max_num_seqs is not None:
            kwargs["max_num_seqs"] = cfg.max_num_seqs
        if embeds:
            kwargs["enable_mm_embeds"] = True
        self.family = family(path)
        if self.family == "qwen2_vl":
            if importlib.util.find_spec("torchvision") is None:  # else vLLM fails deep in its model inspection
                raise RuntimeError(f"vLLM's Qwen2-VL needs torchvision, which the engine env {sys.prefix} lacks. "
                                   "Run `make setup` (requirements/engine.lock pins torchvision==0.28.0).")
            kwargs["limit_mm_per_prompt"] = {"image": 1, "video": 0}  # no video: vLLM then profiles none
        self.llm = LLM(**{**kwargs, **cfg.vllm_args})
        self.tokenizer = self.llm.get_tokenizer()
        config = AutoConfig.from_pretrained(str(path), local_files_only=True, trust_remote_code=cfg.trust_remote_code)
        self.image_token_id = config.image_token_id if hasattr(config, "image_token_id") else config.image_token_index
        if self.family == "qwen2_vl":
            self.images = ImageInputs(path)
            self.image_tokens = self.images.max_image_tokens
            self.encoder = qwen_encoder(path, cfg.dtype, cfg.vision_device) if embeds else None
        else:
            self.image_tokens = image_tokens(config)
            self.prep = ImagePrep(path, pad=cfg.pad_to_square)
            self.encoder = llava_encoder(path, cfg.dtype, cfg.vision_device) if embeds else None
        from vllm.exceptions import VLLMValidationError

        self.row_errors = (OSError, VLLMValidationError)  # a bad image / a rejected prompt, not a broken engine

    def prompt_tokens(self, prompt: str, image: str | None = None) -> int:
        ids = self.tokenizer(prompt).input_ids
        return len(ids) + ids.count(self.image_token_id) * (self._image_tokens(image) - 1)

    def _image_tokens(self, image: str | None) -> int:
        """LLaVA: a fixed count. Qwen2-VL: the image's own (dynamic resolution), at most max_image_tokens."""
        return self.images.image_tokens(image) if self.family == "qwen2_vl" else self.image_tokens

    def _images(self, requests: list[Request]) -> list:
        """PIL squares for clean rows; (1, tokens, hidden) embeddings for exact-noise rows."""
        import torch

        if self.family == "qwen2_vl":
            return self._qwen_images(requests)

        images: list = [None] * len(requests)
        noisy = [i for i, r in enumerate(requests) if r.noise_step is not None]
        for lo in range(0, len(noisy), ENCODER_BATCH):
            idx = noisy[lo : lo + ENCODER_BATCH]
            pv = torch.cat([self.prep.noised(requests[i].image, requests[i].noise_step, requests[i].aug_seed) for i in idx])
            for i, emb in zip(idx, self.encoder(pv)):
                images[i] = emb[None]
        for i, r in enumerate(requests):
            if r.noise_step is None:
                images[i] = self.prep.square(r.image)
        return images

    def _qwen_images(self, requests: list[Request]) -> list:
        """PIL images for clean rows; {"image_embeds": [tokens, hidden], "image_grid_thw": [1, 3]} for
        exact-noise rows (the processor's pixel_values noised, through the visual tower + merger)."""
        import torch

        images: list = [self.images.image(r.image) if r.noise_step is None else None for r in requests]
        noisy = [i for i, r in enumerate(requests) if r.noise_step is not None]
        for lo in range(0, len(noisy), ENCODER_BATCH):
            idx = noisy[lo : lo + ENCODER_BATCH]
            pvs, grids = zip(*(self.images.noised(requests[i].image, requests[i].noise_step, requests[i].aug_seed) for i in idx))
            for i, grid, emb in zip(idx, grids, self.encoder(torch.cat(pvs), torch.cat(grids))):
                images[i] = {"image_embeds": emb, "image_grid_thw": grid}
        return images

    def generate(self, requests: list[Request]) -> list[Output]:
        from vllm import SamplingParams

        sample = self.cfg.temperature > 0
        params = [
            SamplingParams(temperature=self.cfg.temperature, top_p=self.cfg.top_p if sample else 1.0,
                           max_tokens=self.cfg.max_new_tokens, seed=request_seed(self.cfg.seed, r.req_id) if sample else None,
                           logprobs=self.cfg.logprobs or None)
            for r in requests
        ]
        prompts = [{"prompt": r.prompt, "multi_modal_data": {"image": img}} for r, img in zip(requests, self._images(requests))]
        outs = self.llm.generate(prompts, params, use_tqdm=False)
        return [
            Output(r.req_id, answer_text(self.tokenizer, list(o.outputs[0].token_ids)), list(o.outputs[0].token_ids),
                   o.outputs[0].finish_reason, len(o.prompt_token_ids), first_logprobs=self._first(o.outputs[0]))
            for r, o in zip(requests, outs)
        ]

    def _first(self, completion) -> list[tuple[str, float]]:
        """The first step's top-k (vLLM adds the sampled token to them; `top_logprobs` keeps k)."""
        if not self.cfg.logprobs or not completion.logprobs:
            return []
        return top_logprobs(self.tokenizer, {t: lp.logprob for t, lp in completion.logprobs[0].items()}, self.cfg.logprobs)


def _die_with_parent() -> None:
    """SIGKILL this worker when the stage process that started it dies (Linux), so no orphan keeps
    writing shards or holding GPU memory after a kill -9 of the flow."""
    parent = os.environ.get("SEVA_PARENT_PID")
    if not parent:
        return
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != int(parent):  # died before the line above took effect
        os._exit(1)


def start(argv: list[str] | None, module: str) -> tuple[Path, dict, WorkerSpec] | None:
    """What a worker (or the Ray driver) does first: check its one argument, tie its life to the
    stage's, set up logging; returns (spec path, spec, engine settings), or None after a usage line."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(f"usage: python -m {module} SPEC.json", file=sys.stderr)
        return None
    _die_with_parent()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    spec = json.loads(Path(args[0]).read_text())
    return Path(args[0]), spec, WorkerSpec.model_validate(spec["engine"])


def main(argv: list[str] | None = None) -> int:
    """Run the shards of a spec file; exit 0 only when every shard has a published result."""
    from seva_tasks.engines.shards import run_shards

    if (started := start(argv, "seva_tasks.engines.vllm_worker")) is None:
        return 2
    _, spec, cfg = started
    run_shards(spec["jobs"], cfg, embeds=spec.get("embeds", False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
