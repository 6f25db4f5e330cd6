"""Prompt strings: LLaVA-1.5's conversation templates verbatim, or the model's own chat template.

LLaVA (`llava/conversation.py`, SeparatorStyle.TWO, sep " ", sep2 "</s>") renders one user turn with
an image as  `{system} USER: <image>\\n{question} ASSISTANT:`.  SeVa generates with `llava_v1`
("curious human"); LLaVA-1.5 evaluates with `vicuna_v1` ("curious user"). BOS is not in the string:
the tokenizer adds it, as llava-hf's does (reference/eval-formats.md §0).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

Template = Literal["llava_v1", "vicuna_v1", "chat_template"]
IMAGE_TOKEN = "<image>"  # LLaVA's DEFAULT_IMAGE_TOKEN, and llava-hf's

SYSTEMS = {
    "llava_v1": (
        "A chat between a curious human and an artificial intelligence assistant. "
        "The assistant gives helpful, detailed, and polite answers to the human's questions."
    ),
    "vicuna_v1": (
        "A chat between a curious user and an artificial intelligence assistant. "
        "The assistant gives helpful, detailed, and polite answers to the user's questions."
    ),
}

# LLaVA-1.5's answer-format suffixes (docs/Evaluation.md; the `text` of its eval question files and
# the instruction mix's OCR-VQA/GQA/A-OKVQA turns), after "\n".
SHORT_ANSWER = "Answer the question using a single word or phrase."
OPTION_LETTER = "Answer with the option's letter from the given choices directly."


def conv_prompt(question: str, template: str) -> str:
    """LLaVA's `conv.get_prompt()` for `<image>\\n{question}` as the first user turn."""
    return f"{SYSTEMS[template]} USER: {IMAGE_TOKEN}\n{question} ASSISTANT:"


def chat_template_prompt(question: str, processor) -> str:
    """The model's own chat template (one image, then the question), with the generation prompt."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def prompt_builder(template: Template, model: Path):
    """question -> prompt string; loads the model's processor only for `chat_template`."""
    if template != "chat_template":
        return lambda q: conv_prompt(q, template)
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(str(model), local_files_only=True)
    return lambda q: chat_template_prompt(q, processor)
