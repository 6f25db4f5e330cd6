"""The pipeline's stages, one module each: pretrain sample augment generate filter train baseline evaluate.

Each defines one `<Stage>Config` and `run(cfg, inputs, out_dir) -> dict` (stats for the manifest) and
imports libraries (`seva_tasks.llava`, `.engines`, `.benchmarks`, `.store`), never another stage.
`seva_tasks.pipeline` wires them; nothing here knows Prefect.
"""
