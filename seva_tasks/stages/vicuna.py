"""Stage `vicuna`: train the toy LLaVA's language model on text alone, the toy world's Vicuna.

    seva run --until vicuna vicuna.steps=7000          # this stage alone (it has no upstream)
    seva run vicuna.steps=7000 tower.steps=1200 tower.align=true pretrain.freeze_tower=true

Toy preset only, and off unless the config has a `vicuna:` section. LLaVA-1.5 starts from a released
Vicuna; the toy's random tiny LLaVA has none, and from random weights its LM does not learn to compare
a question's words with the image (experiments/miniature/README.md). This stage gives it one: short text
conversations about fresh scenes with the caption where the image will be (`toy.lm`), answer-only
cross-entropy, transformers' `Trainer`. With `bind_steps`, colour-by-shape questions alone come first, the
lookup that reads a caption's word order (in the mix it did not form); with `compose_steps`, then the held-out
gate's lettered choice with its two parts (that lookup and the option's letter), where the composition forms.
No image goes in, so only the language model's weights change.
Its output is `pretrain`'s input model, so the experiment's seeds (`pretrain.seed`) vary the tower and
instruction tuning on one shared LM, as LLaVA's runs share one Vicuna, and a change to pretrain does not
pay for this stage again.

Output: `out_dir/model/` (the input model's files, the trained weights with llava-hf names) and
`metrics.jsonl`; the manifest records held-out text accuracy per question kind (`toy.lm.heldout`, the
caption in place of the image) next to the majority answer's, and colour, shape and side on scenes of one
object and of several (`binding`: only the second needs the lookup).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from pydantic import Field, model_validator

from seva_tasks.errors import InputError
from seva_tasks.toy import fit, lm
from seva_tasks.toy.heldout import majority

log = logging.getLogger(__name__)


class VicunaConfig(fit.FitConfig):
    """Text-only training of the toy LLaVA's language model: data, optimiser (`toy.fit.FitConfig`'s too) and the
    held-out check. Each step's conversations are fresh scenes: steps × batch_size in all; at 1e-4, 1,500 steps
    stay near the label prior."""

    steps: int = Field(3000, ge=1, description="Optimizer steps (3,000 at 1e-3 leave the label prior on the 2-layer LM; lettered choice needs more, experiments/miniature b2-b16).")
    choice_share: float = Field(lm.CHOICE_SHARE, ge=0, le=1, description="Share of conversations asking a lettered choice (A-OKVQA's form) instead of a GQA-style question.")
    lookup_share: float = Field(lm.LOOKUP_SHARE, ge=0, le=1, description="Share asking a lettered lookup whose question names its answer ('Which option is red?'): the letter hop alone, which lets lettered choice form (experiments/miniature b14-b16).")
    seed: int = Field(0, description="Seeds the conversations' scenes, the data order and the held-out questions.")
    heldout: int = Field(280, ge=0, description="Held-out text questions (split evenly over the 7 kinds); 0: skip.")
    conv_template: lm.Template = Field("bare", description="The conversations' format: 'bare' (`USER: {caption}\\n{question} ASSISTANT:`) or 'vicuna_v1', LLaVA's, with its system prompt and GQA's short-answer suffix: the format instruction tuning, the gates and the benchmarks use; or 'both' (`v1_share` of them in vicuna_v1), checked in vicuna_v1 (`toy.lm`).")
    v1_share: float = Field(lm.V1_SHARE, ge=0, le=1, description="With conv_template 'both': the share of conversations in vicuna_v1, the rest bare.")
    v1_steps: int = Field(0, ge=0, description="Then this many more steps in vicuna_v1 alone (a fresh stream of the same mix), as Vicuna was tuned to a chat format after its pretraining: the circuits the first phase formed, then the format the image model is asked in; the held-out check then asks in vicuna_v1.")
    v1_learning_rate: float | None = Field(None, gt=0, description="Peak learning rate of the v1_steps (None: learning_rate).")
    bind_steps: int = Field(0, ge=0, description="First, this many steps of colour-by-shape questions alone (`toy.lm.bindings`) at a constant rate: the lookup that reads the word after the question's shape. In the mix it did not form in any recipe tried (experiments/miniature, sessions 20-21); alone, at toy.init_std 0.05, it forms in 1,000-2,500 steps, and side binds after it in the mix (shape by colour does not). 0: none.")
    compose_steps: int = Field(0, ge=0, description="Then this many steps of the held-out gate's lettered choice with its two parts mixed in, colour by shape and lettered lookups (`toy.lm.compositions`), at a constant rate: lettered choice composes the two lookups. In a 4-layer LM (toy.layers=4) it forms in 1,500-3,000 steps of this phase (session 24; ~6,000 in recall.py), at 2-3 layers not in 10,000 (experiments/miniature, session 23). 0: none.")
    compose_lookups: bool = Field(True, description="Keep the lettered lookups in the compose mix (without them it formed later and less steadily).")
    turns: int = Field(1, ge=1, le=4, description="Rounds per GQA-style conversation (up to the mix's 4 questions about its scene, as LLaVA's rows and ShareGPT's are multi-turn): more answers per step; lettered ones stay one round.")
    grid_caption: bool = Field(False, description="Put the scene's grid caption where the image will be (one word per image token, `toy.tower.grid_caption`) instead of its sentence: the text that `tower.roles` makes the image tokens say.")
    check_every: int = Field(0, ge=0, description="Every this many steps of each phase (and at its last), the text check on `heldout` questions of their own stream (`lm-check`, in the phase's format), written to metrics.jsonl as `check` rows: when each lookup forms. It reads the weights without changing them (the same bytes as without); 0: none.")

    @model_validator(mode="after")
    def _shares_fit(self) -> "VicunaConfig":
        if self.choice_share + self.lookup_share > 1:
            raise ValueError(f"choice_share ({self.choice_share}) + lookup_share ({self.lookup_share}) exceed 1: "
                             "they are shares of the same conversations.")
        return self


def _checks(model, tokenizer, items: list[dict], every: int, phase: str, rows: list[dict]):
    """A `TrainerCallback` that appends the text check on `items` to `rows` every `every` steps and at the last."""
    from transformers import TrainerCallback

    class Checks(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step % every == 0 or state.global_step == state.max_steps:
                rows.append({"phase": phase, "step": state.global_step,
                             "check": lm.accuracy(model.eval(), tokenizer, items)})
                model.train()
                # the rows reach metrics.jsonl when the stage ends: the log shows them as they come
                log.info("vicuna %s step %d: text check %s", phase, state.global_step,
                         {k: round(v, 3) for k, v in rows[-1]["check"].items()})

    return Checks()


def run(cfg: VicunaConfig, inputs: dict[str, Path], out_dir: Path) -> dict:
    """Train the input model's language model on text and publish `out_dir/model/`.

    Args:
        cfg: the stage config. inputs: {"model": the toy world's random tiny LLaVA}. out_dir: the store's partial dir.
    Returns:
        Manifest stats: conversations, steps, final loss, held-out text accuracy per kind with the majority
        answer's, seconds.
    """
    started = time.time()
    base = Path(inputs["model"])
    if error := fit.base_missing(base):
        raise InputError(error)
    with fit.loaded(cfg, base) as (processor, model):
        tok = processor.tokenizer
        vision = model.config.vision_config
        grid = vision.image_size // vision.patch_size if cfg.grid_caption else 0
        checks: list[dict] = []

        def train(phase_cfg: VicunaConfig, examples: list[dict], phase: str, template: lm.Template, desc: str):
            callbacks = ()
            if cfg.check_every and cfg.heldout:
                items = lm.heldout(cfg.seed, cfg.heldout, grid, template, stream="lm-check")
                callbacks = (_checks(model, tok, items, cfg.check_every, phase, checks),)
            return fit.fit(phase_cfg, model.train(), examples, processor, out_dir, phase=phase, desc=desc,
                           callbacks=callbacks)

        history, examples = [], []
        # the lookup phases first, each at a constant rate, in one format ("both" is the mix's)
        single = cfg.conv_template if cfg.conv_template != "both" else "bare"
        for phase, steps, make, options, desc in (
                ("bind", cfg.bind_steps, lm.bindings, {}, "vicuna (binding)"),
                ("compose", cfg.compose_steps, lm.compositions, {"lookups": cfg.compose_lookups},
                 "vicuna (lettered choice)")):
            if steps:
                data = lm.examples(tok, cfg.seed, steps * cfg.batch_size, make=make, grid=grid, template=single,
                                   **options)
                constant = cfg.model_copy(update={"steps": steps, "lr_scheduler_type": "constant_with_warmup"})
                history += train(constant, data, phase, cfg.conv_template, desc)
                examples += data
        main = lm.examples(tok, cfg.seed, cfg.steps * cfg.batch_size,
                           choice_share=cfg.choice_share, lookup_share=cfg.lookup_share, grid=grid,
                           template=cfg.conv_template, v1_share=cfg.v1_share, turns=cfg.turns)
        log.info("Toy Vicuna: %d steps on %d text conversations.", cfg.steps, len(main))
        history += train(cfg, main, "vicuna", cfg.conv_template, "vicuna")
        examples += main
        if cfg.v1_steps:
            more = lm.examples(tok, f"{cfg.seed}:v1", cfg.v1_steps * cfg.batch_size, choice_share=cfg.choice_share,
                               lookup_share=cfg.lookup_share, grid=grid, template="vicuna_v1", turns=cfg.turns)
            then = cfg.model_copy(update={"steps": cfg.v1_steps, "learning_rate": cfg.v1_learning_rate or cfg.learning_rate})
            history += train(then, more, "vicuna_v1", "vicuna_v1", "vicuna (vicuna_v1)")
            examples += more
        fit.save(model.eval(), base, out_dir / "model")
        template = "vicuna_v1" if cfg.v1_steps else cfg.conv_template
        items = lm.heldout(cfg.seed, cfg.heldout, grid, template)
        accuracy = lm.accuracy(model, tok, items) if items else {}
        # colour, shape and side on lone objects ("color1") and on 2-4 ("color2"): the text check's colour mixes
        # the two, and only the second needs the lookup (experiments/miniature, session 20)
        pairs = lm.heldout(cfg.seed, cfg.heldout, grid, template, "lm-binding", lm.BINDING, by_objects=True)
        binding = lm.accuracy(model, tok, pairs) if pairs else {}
    steps = fit.metrics(out_dir, history)
    with open(out_dir / "metrics.jsonl", "a") as f:
        f.writelines(json.dumps(c) + "\n" for c in checks)
    log.info("Toy Vicuna trained; held-out text accuracy %s → %s", accuracy, out_dir / "model")
    return {"counts": {"conversations": len(examples)}, "steps": cfg.steps,
            "final_loss": steps[-1]["loss"] if steps else None,
            "heldout": {"accuracy": accuracy, "majority": majority(items) if items else {}, "questions": len(items),
                        "binding": binding},
            "seconds": round(time.time() - started, 1)}
