"""What every stage needs to know about the Qwen2-VL family (Qwen2-VL, Qwen2.5-VL), DESIGN §8:
images (the processor's dynamic resolution, SeVa's exact noise on its normalized patchified
`pixel_values`), the visual tower + merger that turn them into the embeddings vLLM accepts, and
prompts (the checkpoint's own chat template; seva renders no Qwen strings itself).

Imported by the engine env too: only torch, numpy, PIL, transformers here (never polars, prefect).
"""
