"""Stage `train`: DPO on the filter stage's pairs with TRL's DPOTrainer and a PEFT LoRA adapter.

    seva run --until train                              # this stage and every stage before it
    seva run --until train train.beta=0.2               # reruns only train (and what follows)
    seva run --until train train.num_processes=2        # DDP through `accelerate launch` (seva_tasks/launch.py)
    python -m seva_tasks.stages.train CFG.json MODEL PAIRS.parquet OUT_DIR   # one training process: what
                                                        # `accelerate launch` starts on each GPU

SeVa's recipe (reference/seva-recipe.md §1e) on stock TRL: sigmoid DPO on summed log-probs, both
answers conditioned on the clean image (the pairs' `images`), LoRA on every linear layer of the
language model, the projector trained in full (`modules_to_save`), the vision tower frozen, the data
repeated ×`repeat`, warmup as SeVa effectively ran it (warmup_steps 0.03 -> ceil(0.03·steps) in the
paper presets). Each side of a pair is LLaVA's `preprocess_v1` string (`conv_template: vicuna_v1`:
system prompt, `USER: <image>\n{q} ASSISTANT: {a}</s>`), tokenized at once, loss on the answer and
`</s>` (`PreferenceCollator`), never the checkpoint's chat template, which for llava-hf lacks both.
Other families (Qwen2-VL) train on their own chat template (`conv_template: chat_template`), loss on
the answer and the end-of-turn `<|im_end|>\n`; the processor adds their image tensors
(`pixel_values`, `image_grid_thw`). Which module is "the projector" and how merged weights are named
is the family's (`WEIGHTS`: seva_tasks/<family>/weights.py).

The reference is the policy with its adapter disabled (TRL's default with PEFT), not SeVa's second
full copy: the same function at step 0, and bench/dpo_memory.py measures the memory it saves. That
also disables PEFT's trained copy of the projector; SeVa's reference sees the policy's current
projector (its frozen copy gets image features from the policy), so `reference_projector: current`
(paper presets) points each modules_to_save wrapper's `original_module` at its trained copy.

Outputs in out_dir:
    adapter/            PEFT adapter (safetensors: LoRA weights + the trained projector) + processor; its
                        `base_model_name_or_path` is the base's content fingerprint (the manifest has the
                        path): load it with `PeftModel.from_pretrained(base, "adapter")`, or serve merged/
    merged/             base + adapter merged, in `merged_dtype`, with processor, tokenizer and chat
                        template; weights named so that vLLM 0.32 and transformers both load them
                        (the family's `for_serving`)
    metrics.jsonl       one line per logging step: loss, rewards/{chosen,rejected,accuracies,margins}, ...
    trainer_state.json  transformers' TrainerState at the end
Checkpoints go to out_dir/checkpoints/. The store keeps a resumable stage's `.partial/` dir across
failed attempts, so a rerun with the same key resumes from the last checkpoint; they are deleted
once the adapter is saved (a 7B r=1024 checkpoint with Adam state is ~30 GB).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from seva_tasks.artifacts import PAIRS
from seva_tasks import launch, progress
from seva_tasks.base import StageConfig
from seva_tasks.errors import ConfigError, InputError
from seva_tasks.family import check_template, family
from seva_tasks.fingerprint import fingerprint as fingerprint_path  # not `fingerprint`: that name is the stage hook (pipeline.Stage)
from seva_tasks.llava import weights as llava_weights
from seva_tasks.qwen2vl import weights as qwen2vl_weights
from seva_tasks.preference import COLUMNS, PreferenceCollator, describe, load_pairs, token_lengths


log = logging.getLogger(__name__)

WEIGHTS = {"llava": llava_weights, "qwen2_vl": qwen2vl_weights}  # family -> its PROJECTOR and for_serving()
LLM_LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LOSSES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot", "aot_unpaired",
          "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm")  # TRL 1.16's DPOConfig.loss_type values
METRIC_KEYS = ("step", "epoch", "loss", "learning_rate", "grad_norm", "rewards/chosen", "rewards/rejected",
               "rewards/accuracies", "rewards/margins", "logps/chosen", "logps/rejected")
WALL_CLOCK = ("train_runtime", "train_samples_per_second", "train_steps_per_second")  # Trainer's summary: the manifest's, not a file's


class TrainConfig(StageConfig):
    """DPO + LoRA settings; defaults are SeVa-7B's run script (global batch 16 × 8 GPUs × 1 = 128).

    Args: see each field's description. Returns: n/a.
    """

    conv_template: Literal["vicuna_v1", "llava_v1", "chat_template"] = Field("vicuna_v1", description="Training sequence: LLaVA's preprocess_v1 with the 'vicuna_v1' system prompt (SeVa's `--version v1`): `{system} USER: <image>\\n{q} ASSISTANT: {a}</s>`, loss on the answer and </s>; or the checkpoint's own 'chat_template' (other model families).")
    trust_remote_code: bool = Field(False, description="Allow the model directory's own Python code (off: nothing runs but transformers).")
    precision: Literal["bf16", "fp32"] = Field("bf16", description="bf16: load weights in bfloat16 and train in bf16 mixed precision (GPU); fp32 for CPU and tests.")
    gradient_checkpointing: bool = Field(True, description="Recompute activations in the backward pass: less memory, ~20% slower.")
    loss_type: str | list[str] = Field("sigmoid", description="TRL's DPO loss, or a list combined with loss_weights (e.g. MPO's [sigmoid, bco_pair, sft]); 'sigmoid' is the DPO paper's (and SeVa's) -log σ(β·margin); 'ipo', 'robust' (with label_smoothing), 'sft' (NLL of the chosen answers only), ... as TRL 1.16 names them.")
    loss_weights: list[float] | None = Field(None, description="One weight per loss_type entry; null: 1.0 each.")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="Robust DPO's probability that a preference label is flipped (loss 'robust'), EXO's ε ('exo_pair').")
    rpo_alpha: float = Field(0.0, ge=0, description="RPO: add α·NLL of the chosen answer (TRL's 'sft' loss with weight α; TRL 1.16 has no rpo_alpha of its own).")
    control: Literal["none", "swapped", "shuffled", "blank_image"] = Field("none", description="An experiment's control on the same pairs: chosen and rejected swapped, rejected answers shuffled across rows, or a blank image; none: SeVa.")
    beta: float = Field(0.1, gt=0, description="DPO β: higher keeps the policy closer to the reference.")
    learning_rate: float = Field(2e-6, gt=0, description="Peak learning rate (AdamW).")
    lr_scheduler_type: str = Field("cosine", description="transformers scheduler name, e.g. cosine, linear, constant.")
    warmup_steps: float = Field(0, ge=0, description="Linear warmup: optimizer steps, or a fraction of all steps if < 1 (SeVa's effective warmup: 0.03, i.e. ceil(0.03·steps)).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    num_train_epochs: float = Field(1, gt=0, description="Passes over the (repeated) pairs.")
    max_steps: int = Field(-1, description="Stop after this many optimizer steps (overrides epochs); -1: train the epochs.")
    per_device_train_batch_size: int = Field(16, ge=1, description="Pairs per device per step (each pair is 2 sequences).")
    gradient_accumulation_steps: int = Field(1, ge=1, description="Steps accumulated per optimizer update; global batch = per_device × num_processes × this.")
    repeat: int = Field(2, ge=1, description="Repeat the pairs this many times per epoch (SeVa: ×2, 'more saturated and stable training').")
    max_length: int | None = Field(2048, ge=1, description="Truncate prompt+answer to this many tokens (answers lose their tail); null: never truncate. Must fit every prompt's image tokens.")
    lora_r: int = Field(1024, ge=1, description="LoRA rank.")
    lora_alpha: float = Field(2048, gt=0, description="LoRA α (scaling α/r).")
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA branch (TRL disables model dropout anyway).")
    lora_target_modules: list[str] = Field(default_factory=lambda: list(LLM_LINEARS), min_length=1, description="Linear layer names (last name component) that get LoRA.")
    lora_scope: str = Field("language_model", description="Only modules under a submodule of this name get LoRA ('' = anywhere; keeps LoRA off the vision tower's q/k/v).")
    modules_to_save: list[str] | None = Field(None, description="Non-LoRA modules trained in full and saved with the adapter; everything else is frozen. null: the model family's projector, as SeVa trains LLaVA's (its package's weights.PROJECTOR: Qwen2-VL's merger); [] none.")
    reference_projector: Literal["original", "current"] = Field("original", description="What the DPO reference (the policy with its adapter disabled) uses for the modules_to_save: the base model's 'original' weights (TRL/PEFT's default) or the policy's 'current', trained ones, as SeVa's reference does.")
    seed: int = Field(42, description="Seeds LoRA init, data order and dropout (SeVa: 42).")
    logging_steps: int = Field(1, ge=1, description="Log metrics every this many optimizer steps.")
    save_steps: int = Field(50, ge=1, description="Checkpoint every this many optimizer steps (what a rerun resumes from).")
    merged_dtype: Literal["float32", "bfloat16", "float16"] = Field("float16", description="dtype of merged/ (the merge itself runs in float32); float16 is LLaVA-1.5's release dtype and keeps small LoRA deltas better than bfloat16.")
    accelerate_config: Path | None = Field(None, description="Train in `accelerate launch --config_file <this>` subprocesses: configs/accelerate/ddp.yaml (DDP; the default when num_processes > 1), zero2.yaml (DeepSpeed ZeRO-2, paper presets), zero3.yaml (not with LoRA); null with num_processes 1: in this process.")
    num_processes: int = Field(1, ge=1, description="Training processes (GPUs; on CPUs, gloo processes); > 1 launches accelerate. Overrides the file's num_processes. Global batch = per_device × this × accumulation.")

    @model_validator(mode="after")
    def _known_losses(self) -> TrainConfig:
        types, errors = self.losses()[0], []
        if unknown := [t for t in types if t not in LOSSES]:
            errors.append(f"train.loss_type: unknown loss {unknown}; TRL 1.16 has {', '.join(LOSSES)}.")
        if self.loss_weights is not None and len(self.loss_weights) != (len(types) - (self.rpo_alpha > 0)):
            errors.append(f"train.loss_weights: {len(self.loss_weights)} weights for loss_type {self.loss_type}; give one per loss.")
        if "exo_pair" in types and self.label_smoothing == 0:
            errors.append("train.label_smoothing must be > 0 with loss 'exo_pair' (TRL refuses 0; EXO's paper uses 1e-3).")
        if errors:
            raise ValueError(" ".join(errors))
        return self

    def trained_modules(self, model: Path) -> list[str]:
        """modules_to_save, or the family's projector when unset."""
        return list(self.modules_to_save) if self.modules_to_save is not None else [WEIGHTS[family(model)].PROJECTOR]

    def losses(self) -> tuple[list[str], list[float]]:
        """(TRL loss_type, loss_weights): the configured losses, plus 'sft' at weight rpo_alpha for RPO."""
        types = [self.loss_type] if isinstance(self.loss_type, str) else list(self.loss_type)
        weights = list(self.loss_weights) if self.loss_weights is not None else [1.0] * len(types)
        if self.rpo_alpha > 0:
            types, weights = [*types, "sft"], [*weights, self.rpo_alpha]
        return types, weights


# --------------------------------------------------------------------------------------------
# Inputs


def _check_inputs(cfg: TrainConfig, model: Path, pairs: Path) -> int:
    """Cheap checks before torch is imported; returns the number of pairs."""
    import pyarrow.parquet as pq

    errors = []
    if not (model / "config.json").is_file():
        errors.append(f"Base model not found: {model} has no config.json. Point `model:` at a local "
                      "transformers checkpoint directory, e.g. model=/models/llava-1.5-7b-hf.")
    else:
        check_template(model, cfg.conv_template, "train.conv_template")
    if not pairs.is_file():
        errors.append(f"Pairs file missing: {pairs}. Rerun the filter stage: seva run --until filter --refresh filter.")
    else:
        meta = pq.ParquetFile(pairs)
        missing = [c for c in COLUMNS if c not in meta.schema_arrow.names]
        if missing:
            errors.append(f"{pairs} lacks column(s) {', '.join(missing)} (has {', '.join(meta.schema_arrow.names)}). "
                          f"The train stage reads TRL's vision preference format: {', '.join(COLUMNS)}.")
        elif meta.metadata.num_rows == 0:
            errors.append(f"{pairs} has no pairs: every candidate was dropped upstream. See the filter "
                          "stage's manifest (drops) and loosen its settings, or sample more prompts.")
    if errors:
        raise InputError("\n".join(errors))
    return meta.metadata.num_rows


def _check_lengths(cfg: TrainConfig, ds, processor) -> dict:
    """Refuse a max_length that would cut image tokens (TRL: verify before using max_length with a VLM)."""
    p_len, a_len, per_image = token_lengths(ds, cfg.conv_template, processor)
    longest = max(range(len(p_len)), key=p_len.__getitem__)
    stats = {"image_tokens": per_image, "max_prompt_tokens": p_len[longest], "max_total_tokens": max(map(sum, zip(p_len, a_len)))}
    if cfg.max_length is None:
        return {**stats, "truncated_pairs": 0}
    if p_len[longest] > cfg.max_length:
        raise ConfigError(
            f"train.max_length={cfg.max_length} would cut image tokens: pair {longest} has a {p_len[longest]}-token "
            f"prompt ({per_image} tokens per image). Set train.max_length >= {p_len[longest]}, or null to never truncate.")
    truncated = sum(p + a > cfg.max_length for p, a in zip(p_len, a_len))
    if truncated:
        log.warning("max_length=%d cuts the answer tail of %d/%d pairs (images intact).", cfg.max_length, truncated, len(p_len))
    return {**stats, "truncated_pairs": truncated}


def show_example(cfg: TrainConfig, base: Path, pairs: Path, index: int = 0) -> str:
    """Pair `index` as the trainer sees it (what `seva inspect train-example` prints): the decoded prompt,
    chosen and rejected tokens with the loss marked, and the image tensor's shape."""
    processor = _load_processor(cfg, base)
    batch = PreferenceCollator(processor, cfg.conv_template, cfg.max_length)([load_pairs(pairs)[index]])
    return describe(batch, processor, f"pair {index} of {pairs}, conv_template={cfg.conv_template}, model {base}")


# --------------------------------------------------------------------------------------------
# Model, adapter, trainer


def load_model(cfg: TrainConfig, model: Path, dtype: str | None = None):
    import torch
    from transformers import AutoModelForImageTextToText

    dtype = dtype or ("bfloat16" if cfg.precision == "bf16" else "float32")
    return AutoModelForImageTextToText.from_pretrained(model, dtype=getattr(torch, dtype),
                                                       trust_remote_code=cfg.trust_remote_code)


def _load_processor(cfg: TrainConfig, model: Path):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(model, trust_remote_code=cfg.trust_remote_code)


def _target_regex(cfg: TrainConfig) -> str:
    names = "|".join(map(re.escape, cfg.lora_target_modules))
    scope = rf"(.*\.)?{re.escape(cfg.lora_scope)}\..*" if cfg.lora_scope else r"(.*\.)?"
    return rf"{scope}({names})"


def _lora_config(cfg: TrainConfig, model, path: Path):
    """peft.LoraConfig for the language model's linears; ConfigError if a name matches nothing."""
    from peft import LoraConfig

    regex = re.compile(_target_regex(cfg))
    names = [n for n, _ in model.named_modules()]
    trained = cfg.trained_modules(path)
    errors = []
    if not any(regex.fullmatch(n) for n in names):
        errors.append(f"train.lora_target_modules={cfg.lora_target_modules} under train.lora_scope={cfg.lora_scope!r} "
                      f"match no module of {path}; e.g. lora_scope=language_model, lora_target_modules=[q_proj, v_proj].")
    for m in trained:
        if not any(n == m or n.endswith("." + m) for n in names):
            errors.append(f"train.modules_to_save: no module named {m!r} in {path}; e.g. "
                          f"{WEIGHTS[family(path)].PROJECTOR} (its projector), or null for that.")
    if errors:
        raise ConfigError("\n".join(errors))
    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, target_modules=regex.pattern,
                      modules_to_save=trained or None, task_type="CAUSAL_LM")


def _dpo_config(cfg: TrainConfig, out_dir: Path):
    import torch
    from trl import DPOConfig

    loss_type, loss_weights = cfg.losses()
    return DPOConfig(
        output_dir=str(out_dir / "checkpoints"), seed=cfg.seed, report_to="none",
        loss_type=loss_type, loss_weights=loss_weights, label_smoothing=cfg.label_smoothing, beta=cfg.beta,
        max_length=cfg.max_length,
        learning_rate=cfg.learning_rate, lr_scheduler_type=cfg.lr_scheduler_type, warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay, num_train_epochs=cfg.num_train_epochs, max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        bf16=cfg.precision == "bf16", gradient_checkpointing=cfg.gradient_checkpointing,
        logging_steps=cfg.logging_steps, save_strategy="steps", save_steps=cfg.save_steps,
        save_total_limit=2,  # the last one is what a rerun resumes from; two survive a crash mid-save
        trust_remote_code=cfg.trust_remote_code,
        # Without CUDA, each process under `accelerate launch` must know it is a CPU process to join a gloo group.
        use_cpu=not torch.cuda.is_available(),
    )


def fit(cfg: TrainConfig, base: Path, pairs: Path, out_dir: Path):
    """Train (or resume) and save adapter/, metrics.jsonl and trainer_state.json; returns the DPOTrainer."""
    from datasets import concatenate_datasets
    from transformers.trainer_utils import get_last_checkpoint
    from trl import DPOTrainer

    args = _dpo_config(cfg, out_dir)  # before the model: under ZeRO-3 it decides how weights load
    processor = _load_processor(cfg, base)
    ds = load_pairs(pairs, cfg.control, cfg.seed)
    lengths = _check_lengths(cfg, ds, processor)
    ds = concatenate_datasets([ds] * cfg.repeat)  # SeVa's `data * 2`; the sampler shuffles across copies
    model = load_model(cfg, base)
    # The base by content, as generate names it (its path holds upstream keys): PEFT writes this name into the
    # adapter's config and model card.
    model.name_or_path = model.config._name_or_path = fingerprint_path(base)
    trainer = DPOTrainer(model=model, ref_model=None, args=args, train_dataset=ds, processing_class=processor,
                         data_collator=PreferenceCollator(processor, cfg.conv_template, cfg.max_length), peft_config=_lora_config(cfg, model, base),
                         callbacks=[progress.trainer_callback("train")])
    if cfg.reference_projector == "current":
        _share_trained_modules(trainer.model)
    last = get_last_checkpoint(args.output_dir) if Path(args.output_dir).is_dir() else None
    if last:
        log.info("Resuming from %s.", last)
    trainer.train(resume_from_checkpoint=last)
    trainer.save_model(str(out_dir / "adapter"))
    if trainer.is_world_process_zero():
        (out_dir / "adapter" / "training_args.bin").unlink(missing_ok=True)  # a pickle; the manifest holds the config
        # Wall-clock figures go to the manifest, not the published files: the same run must publish the same bytes
        # (the digest downstream keys hang on).
        timing = {k: row.pop(k) for row in trainer.state.log_history for k in WALL_CLOCK if k in row}
        trainer.state.save_to_json(str(out_dir / "trainer_state.json"))
        with open(out_dir / "metrics.jsonl", "w") as f:
            for row in trainer.state.log_history:
                f.write(json.dumps(row) + "\n")
        info = {"lengths": lengths, "resumed_from_step": int(Path(last).name.split("-")[-1]) if last else None,
                "trainable": _trainable(trainer.model), "processes": trainer.args.world_size, "timing": timing}
        (out_dir / "checkpoints" / "run_info.json").write_text(json.dumps(info))
    return trainer


def _share_trained_modules(model) -> None:
    """Point each modules_to_save wrapper's `original_module` at its trained copy, so the reference
    forward (adapter disabled) runs the policy's current projector, as SeVa's does. Nothing is lost:
    merge reloads the base from disk, and the adapter saves only the trained copy."""
    for module in model.modules():
        if type(module).__name__ == "ModulesToSaveWrapper":
            module.original_module = module.modules_to_save[module.active_adapter]


def _trainable(model) -> dict:
    """Trainable parameter counts by kind (LoRA, modules_to_save copies) and the frozen total."""
    out = {"lora": 0, "modules_to_save": 0, "other": 0, "frozen": 0}
    for name, p in model.named_parameters():
        kind = "frozen" if not p.requires_grad else "lora" if "lora_" in name else "modules_to_save" if "modules_to_save" in name else "other"
        out[kind] += p.numel()
    return out


# --------------------------------------------------------------------------------------------
# Merge for serving


def merge(cfg: TrainConfig, base: Path, out_dir: Path) -> None:
    """base + adapter/ -> merged/ (float32 merge, saved in merged_dtype, vLLM weight names, processor)."""
    import torch
    from peft import PeftModel

    tmp = out_dir / ".merged.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model = PeftModel.from_pretrained(load_model(cfg, base, "float32"), out_dir / "adapter").merge_and_unload()
    model.to(getattr(torch, cfg.merged_dtype)).save_pretrained(tmp)
    _load_processor(cfg, base).save_pretrained(tmp)
    WEIGHTS[family(base)].for_serving(tmp)
    shutil.rmtree(out_dir / "merged", ignore_errors=True)
    os.replace(tmp, out_dir / "merged")


# --------------------------------------------------------------------------------------------
# Stage entry point


def _stats(out_dir: Path, n_pairs: int, cfg: TrainConfig, seconds: float) -> dict:
    history = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [{k: row[k] for k in METRIC_KEYS if k in row} for row in history if "loss" in row]
    info = json.loads((out_dir / "checkpoints" / "run_info.json").read_text())
    state = json.loads((out_dir / "trainer_state.json").read_text())
    return {
        "counts": {"pairs": n_pairs, "train_rows": n_pairs * cfg.repeat, "steps": state["global_step"]},
        "global_batch": cfg.per_device_train_batch_size * info["processes"] * cfg.gradient_accumulation_steps,
        "final": steps[-1] if steps else {},
        "metrics": steps,
        "seconds": round(seconds, 1),
        **info,
    }


def run(cfg: TrainConfig, inputs: dict[str, Path], out_dir: Path) -> dict:
    """DPO-train a LoRA adapter on `inputs["filter"]/pairs.parquet` and merge it for serving.

    Args:
        cfg: the stage config. inputs: {"filter": artifact dir, "model": the base model dir}. out_dir: the store's (resumable) partial dir.
    Returns:
        Manifest stats: counts (pairs, train_rows, steps), global_batch, final and per-step metrics,
        lengths (image/prompt tokens, truncated pairs), trainable parameter counts, resumed_from_step.
    """
    started = time.time()
    pairs, base = Path(inputs["filter"]) / PAIRS, Path(inputs["model"])
    n_pairs = _check_inputs(cfg, base, pairs)
    if not (out_dir / "adapter" / "adapter_model.safetensors").is_file():
        log.info("Training %s on %d pairs ×%d from %s.", base, n_pairs, cfg.repeat, pairs)
        if (config := launch.config_file(cfg.accelerate_config, cfg.num_processes)) is not None:
            launch.launch(cfg, config, base, pairs, out_dir)
        else:
            fit(cfg, base, pairs, out_dir)
    merge(cfg, base, out_dir)
    stats = _stats(out_dir, n_pairs, cfg, time.time() - started)
    shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)
    log.info("Trained %d steps; adapter and merged model in %s (final margin %s).", stats["counts"]["steps"],
             out_dir, stats["final"].get("rewards/margins"))
    return stats


if __name__ == "__main__":  # a training process under `accelerate launch` (seva_tasks/launch.py)
    logging.basicConfig(level=logging.INFO)
    _cfg, _base, _pairs, _out = sys.argv[1:5]
    fit(TrainConfig.model_validate_json(Path(_cfg).read_text()), Path(_base), Path(_pairs), Path(_out))
