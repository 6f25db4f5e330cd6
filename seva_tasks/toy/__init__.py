"""The embedded toy world: drawn scenes, a LLaVA-665k-style JSON, the ten benchmarks and a tiny LLaVA,
all from one seed (DESIGN §5). Nothing is downloaded; the toy preset points every path here.

    .venv/bin/python -m seva_tasks.toy [key=value ...]   # e.g. seed=3; instant when already built

    scenes      scene records (the ground truth of every image) and `render(scene)`
    mix         the `llava_v1_5_mix665k.json` rows: each source's question templates and file names
    model       the tiny LLaVA: tokenizer, config, processor, chat template, `prompt(question)`
    benchmarks  held-out scenes written in every benchmark's real layout (each module's `write_toy`)
    world       `ToyConfig`, where the files are, `ensure(cfg)` (build once, atomically), `main`
    heldout     held-out questions that measure whether a toy model sees (the pretrain stage's check)

The names below are the package's public API: `from seva_tasks import toy; toy.ensure(cfg)`.
"""

from seva_tasks.toy.model import prompt
from seva_tasks.toy.scenes import random_scene, render
from seva_tasks.toy.world import (WORLD, ToyConfig, ensure, images_dir, load_scenes, manifest, mix_path, model_dir,
                                  root_dir, scenes_path)

__all__ = ["WORLD", "ToyConfig", "ensure", "images_dir", "load_scenes", "manifest", "mix_path", "model_dir", "prompt",
           "random_scene", "render", "root_dir", "scenes_path"]
