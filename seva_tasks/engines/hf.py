"""Engine `hf`: transformers `generate`, the reference the vLLM engine is checked against.

Batch 1 is SeVa's own path (`data/step2/generate_with_aug.py`: one image, greedy, HF generate) and the
performance anchor; `batch_size > 1` pads prompts on the left. Exact-noise rows get their noised
pixel tensor as `pixel_values` directly, as SeVa does.
"""

from __future__ import annotations

import hashlib

from seva_tasks.base import resolve
from seva_tasks.engines import Output, Request, WorkerSpec, answer_text, top_logprobs
from seva_tasks.engines.vision import resolve_dtype
from seva_tasks.llava.vision import ImagePrep, image_tokens
from seva_tasks.family import family
from seva_tasks.qwen2vl.images import ImageInputs


def request_seed(seed: int, key: str) -> int:
    """A per-request sampling seed independent of batching and shard order (< 2**31)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:4], "big") >> 1


class HFEngine:
    """The model (LLaVA or Qwen2-VL family) + its processor, on CPU or the first GPU."""

    row_errors: tuple[type[BaseException], ...] = (OSError,)  # an unreadable image

    def __init__(self, cfg: WorkerSpec):
        import torch
        from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

        self.cfg = cfg
        path = str(resolve(cfg.model))
        config = AutoConfig.from_pretrained(path, local_files_only=True, trust_remote_code=cfg.trust_remote_code)
        self.dtype = resolve_dtype(config, cfg.dtype)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = AutoModelForImageTextToText.from_pretrained(
            path, dtype=self.dtype, local_files_only=True, trust_remote_code=cfg.trust_remote_code
        ).to(self.device).eval()
        self.processor = AutoProcessor.from_pretrained(path, local_files_only=True, trust_remote_code=cfg.trust_remote_code)
        self.tokenizer = self.processor.tokenizer
        self.tokenizer.padding_side = "left"
        self.family = family(path)
        if self.family == "qwen2_vl":
            self.images = ImageInputs(resolve(cfg.model))
        else:
            self.prep = ImagePrep(resolve(cfg.model), pad=cfg.pad_to_square)
        gen = self.model.generation_config
        eos = gen.eos_token_id if gen.eos_token_id is not None else self.tokenizer.eos_token_id
        self.eos = set(eos if isinstance(eos, list) else [eos])
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else min(self.eos)
        self.image_token_id = config.image_token_id if hasattr(config, "image_token_id") else config.image_token_index
        self.image_tokens = self.images.max_image_tokens if self.family == "qwen2_vl" else image_tokens(config)

    def prompt_tokens(self, prompt: str, image: str | None = None) -> int:
        ids = self.tokenizer(prompt).input_ids
        return len(ids) + ids.count(self.image_token_id) * (self._image_tokens(image) - 1)

    def _image_tokens(self, image: str | None) -> int:
        """LLaVA: a fixed count. Qwen2-VL: the image's own (dynamic resolution), at most max_image_tokens."""
        return self.images.image_tokens(image) if self.family == "qwen2_vl" else self.image_tokens

    def generate(self, requests: list[Request]) -> list[Output]:
        out: list[Output] = []
        for i in range(0, len(requests), self.cfg.batch_size):
            out += self._batch(requests[i : i + self.cfg.batch_size])
        return out

    def _batch(self, reqs: list[Request]) -> list[Output]:
        """One padded generate call; rows stop at EOS or at their own token budget."""
        import torch

        enc = self._qwen_inputs(reqs) if self.family == "qwen2_vl" else self._llava_inputs(reqs)
        enc = enc.to(self.device)
        width = enc["input_ids"].shape[1]
        lengths = enc["attention_mask"].sum(dim=1).tolist()
        budgets = [min(self.cfg.max_new_tokens, self.cfg.max_model_len - n) for n in lengths]
        sample = self.cfg.temperature > 0
        if sample:
            torch.manual_seed(request_seed(self.cfg.seed, reqs[0].req_id))
        k = self.cfg.logprobs
        with torch.inference_mode():
            gen = self.model.generate(
                **enc, max_new_tokens=max(budgets), do_sample=sample, pad_token_id=self.pad_id,
                **({"temperature": self.cfg.temperature, "top_p": self.cfg.top_p} if sample else {"temperature": None, "top_p": None, "top_k": None}),
                return_dict_in_generate=True, output_logits=k > 0,
            )
        ids = gen.sequences
        # the first step's raw logits, as vLLM's logprobs are (before temperature or top-p)
        first = torch.log_softmax(gen.logits[0].float(), dim=-1).topk(k) if k else None
        outs = []
        for j, r in enumerate(reqs):
            toks, finish = [], "length"
            for t in ids[j, width:].tolist()[: budgets[j]]:
                toks.append(t)
                if t in self.eos:
                    finish = "stop"
                    break
            text = answer_text(self.tokenizer, [t for t in toks if t not in self.eos])
            alts = top_logprobs(self.tokenizer, dict(zip(first.indices[j].tolist(), first.values[j].tolist())), k) if k else []
            outs.append(Output(r.req_id, text, toks, finish, int(lengths[j]), first_logprobs=alts))
        return outs

    def _llava_inputs(self, reqs: list[Request]):
        """The processor's inputs for square images; exact-noise rows get SeVa's noised tensor."""
        enc = self.processor(text=[r.prompt for r in reqs], images=[self.prep.square(r.image) for r in reqs],
                             padding=True, return_tensors="pt")
        pv = enc["pixel_values"]
        for j, r in enumerate(reqs):
            if r.noise_step is not None:
                pv[j] = self.prep.noised(r.image, r.noise_step, r.aug_seed)[0].to(pv.dtype)
        enc["pixel_values"] = pv.to(self.dtype)
        return enc

    def _qwen_inputs(self, reqs: list[Request]):
        """The processor's inputs; an exact-noise row's patches (its slice of the concatenated
        pixel_values, sized by its image_grid_thw) are noised in place."""
        enc = self.processor(text=[r.prompt for r in reqs], images=[self.images.image(r.image) for r in reqs],
                             padding=True, return_tensors="pt")
        pv, at = enc["pixel_values"], 0
        for r, n in zip(reqs, enc["image_grid_thw"].prod(-1).tolist()):
            if r.noise_step is not None:
                pv[at : at + n] = self.images.noise(pv[at : at + n], r.noise_step, r.aug_seed)
            at += n
        enc["pixel_values"] = pv.to(self.dtype)
        return enc
