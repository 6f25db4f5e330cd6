"""Qwen2-VL prompts: always the checkpoint's own chat template (unlike LLaVA-1.5, whose conversation
strings seva renders itself, Qwen's template *is* its training format: `<|im_start|>` turns, the
default system prompt, one `<|vision_start|><|image_pad|><|vision_end|>` per image, which the
processor (or vLLM) expands to the image's merged patch count)."""

from __future__ import annotations

from pathlib import Path

from seva_tasks.llava.prompts import chat_template_prompt

IMAGE_PLACEHOLDER = "<|vision_start|><|image_pad|><|vision_end|>"  # one image, before expansion


def prompt_builder(model: Path):
    """question -> the chat-template prompt with one image and the generation prompt."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(str(model), local_files_only=True)
    return lambda q: chat_template_prompt(q, processor)
