"""Does a vicuna recipe bind? Its first phase, checked on scenes of one object and of several.

    .venv/bin/python experiments/miniature/binding.py NAME SEED [STOP] [key=value ...] [layers=N] [width=N] [init=STD] [variant=V]

Runs the preset's `vicuna` first phase (`configs/toy-miniature.yaml`'s keys, overridden by `key=value`, on one
thread) for STOP steps (default 4,000) of its cosine schedule, on the toy world's model (with `layers` or `width`:
a fresh language model of that shape). Every 500 steps it asks 900 held-out colour, shape and side questions
(stream "bind") with the caption in the image's place and prints the accuracy on scenes of one object
(`color1`, ...: a lone object needs no binding) and of two to four (`color2`, ...). The text check's colour
(session 19) mixes the two; session 20 found it is 1.00 on lone objects and near chance among the present
objects' colours on the rest, so `color2`, `shape2` and `side2` are what says whether the lookup formed.
`variant` changes the conversations (session 20's probes, patched into `toy.lm` and `toy.mix` for this process only):
`question-first` (bare, `USER: {question}\n{caption} ASSISTANT:`), `recite` (a fifth of the GQA-style conversations
ask "Describe the image briefly." and are answered by the caption, LLaVA's stage 1 in text) or `focus` (each
GQA-style conversation asks colour-by-shape or shape-by-colour first where its scene has such a question); and
`lm-loss` trains on every token's next-token loss, not the answers' alone.
Writes `runs/binding-NAME-sSEED.jsonl`.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _variant(name: str) -> None:
    """Patch the conversations for `variant` (see the module docstring)."""
    from seva_tasks.llava.prompts import SEP2, SHORT_ANSWER
    from seva_tasks.toy import lm, mix, tower

    gqa = mix.QAS["gqa"]
    if name == "question-first":
        def segments(caption, question, answer, template="bare", more=()):
            turns = [(q.removesuffix(f"\n{SHORT_ANSWER}"), a) for q, a in [(question, answer), *more]]
            return [piece for i, (q, a) in enumerate(turns)
                    for piece in ((f"USER: {q}\n{caption} ASSISTANT:" if i == 0 else f"USER: {q} ASSISTANT:", False),
                                  (f" {a}{SEP2}", True))]
        lm.segments = segments
    elif name == "recite":
        mix.QAS["gqa"] = lambda rng, scene: ([("Describe the image briefly.", tower.grid_caption(scene, 4))]
                                             if rng.random() < 0.2 else gqa(rng, scene))
    elif name == "focus":
        def focus(rng, scene):
            qas = gqa(rng, scene)
            first = [qa for qa in qas if qa[0].startswith(("What color", "What shape"))][:1]
            return first + [qa for qa in qas if qa not in first]
        mix.QAS["gqa"] = focus
    else:
        raise SystemExit(f"Unknown variant {name!r}: question-first, recite or focus.")


def main(name: str, seed: str, *args: str) -> None:
    import torch
    import yaml
    from transformers import LlavaForConditionalGeneration, TrainerCallback

    from seva_tasks.stages.vicuna import VicunaConfig
    from seva_tasks.toy import fit, lm

    stop = int(args[0]) if args and "=" not in args[0] else 4000
    sets = dict(a.split("=", 1) for a in args if "=" in a)
    shape = {k: int(sets.pop(k)) for k in ("layers", "width") if k in sets}
    init = float(sets.pop("init")) if "init" in sets else None
    variant = sets.pop("variant", None)
    lm_loss = variant == "lm-loss"
    if variant and not lm_loss:
        _variant(variant)
    keys = yaml.safe_load(open("configs/toy-miniature.yaml"))["vicuna"]
    cfg = VicunaConfig(**{**keys, "seed": int(seed), "threads": 1, **{k: yaml.safe_load(v) for k, v in sets.items()}})
    out = Path(__file__).parent / "runs" / f"binding-{name}-s{seed}.jsonl"
    rows, started = [], time.time()

    with fit.loaded(cfg, Path("data/toy-miniature/model")) as (processor, model):
        if shape or init:
            c = model.config.text_config
            c.initializer_range = init or c.initializer_range
            c.num_hidden_layers = shape.get("layers", c.num_hidden_layers)
            if "width" in shape:
                c.hidden_size, c.intermediate_size = shape["width"], 4 * shape["width"]
            torch.manual_seed(cfg.seed)
            model = LlavaForConditionalGeneration(model.config).float()
        tok = processor.tokenizer
        vision = model.config.vision_config
        grid = vision.image_size // vision.patch_size
        items = lm.heldout(99, 900, grid, cfg.conv_template, "bind", lm.BINDING, by_objects=True)
        examples = lm.examples(tok, cfg.seed, stop * cfg.batch_size, choice_share=cfg.choice_share,
                               lookup_share=cfg.lookup_share, grid=grid,
                               template=cfg.conv_template, v1_share=cfg.v1_share, turns=cfg.turns)
        if lm_loss:  # next-token loss on every token after <s>, as a language model is pretrained
            examples = [{**e, "labels": [-100, *e["input_ids"][1:]]} for e in examples]

        class Check(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step % 500 == 0:
                    rows.append({"step": state.global_step, "seconds": round(time.time() - started),
                                 **lm.accuracy(model.eval(), tok, items)})
                    model.train()
                    print(json.dumps(rows[-1]), flush=True)
                    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
                control.should_training_stop = state.global_step >= stop

        fit.fit(cfg, model.train(), examples, processor, Path(f"/tmp/binding-{name}-{seed}"), phase="vicuna",
                desc="binding", callbacks=(Check(),))


if __name__ == "__main__":
    main(*sys.argv[1:])
