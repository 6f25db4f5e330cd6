"""What every stage shares about LLaVA-1.5: images (load, pad-to-square, resize, CLIP normalize),
SeVa's diffusion noise, prompts (LLaVA's conversation templates and suffixes), weights (names, merge).

Imported by the engine env too: only torch, numpy, PIL, transformers here (never polars, prefect).
"""
