"""The conversation format, owned here: LLaVA-1.5's templates verbatim for generate, train and evaluate,
or the model's own chat template when a config asks for `chat_template`.

LLaVA (`llava/conversation.py`, SeparatorStyle.TWO, sep " ", sep2 "</s>") renders one user turn with
an image as  `{system} USER: <image>\\n{question} ASSISTANT:`.  SeVa generates with `llava_v1`
("curious human"); LLaVA-1.5 evaluates and SeVa trains with `vicuna_v1` ("curious user"), training on
`preprocess_v1`'s `{prompt} {answer}</s>` with the loss on the answer and `</s>` (`conversation`,
`encode`). BOS is not in the strings: the tokenizer adds it, as llava-hf's does (reference/eval-formats.md §0).
llava-hf's own chat template differs (no system prompt, no `</s>`), which is why stages never use it
for LLaVA-1.5 models unless told to.
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


# --------------------------------------------------------------------------------------------
# Training sequences: LLaVA's `preprocess_v1`


SEP2 = "</s>"  # vicuna_v1's sep2: ends each assistant turn and is trained on, so the model learns to stop


def conversation(turns: list[tuple[str, str]], template: str = "vicuna_v1", *, image: bool = True) -> list[tuple[str, bool]]:
    """LLaVA's `preprocess_v1` text as (segment, in_loss) pieces: `{system} USER: <image>\\n{q} ASSISTANT:`
    (no loss), ` {a}</s>` (loss), then `USER: {q} ASSISTANT:` ... for further rounds.

    `turns` are (question, answer) pairs; the image, if any, leads the first question (LLaVA's
    preprocess_multimodal moves it there).
    """
    out = []
    for i, (question, answer) in enumerate(turns):
        if i == 0:
            q = f"{IMAGE_TOKEN}\n{question.replace(IMAGE_TOKEN, '').strip()}" if image else question
            out.append((f"{SYSTEMS[template]} USER: {q} ASSISTANT:", False))
        else:
            out.append((f"USER: {question} ASSISTANT:", False))
        out.append((f" {answer}{SEP2}", True))
    return out


def encode(tokenizer, segments: list[tuple[str, bool]], *, add_special_tokens: bool = True) -> tuple[list[int], list[bool]]:
    """Token ids of the whole conversation and which of them carry loss. BOS comes from the tokenizer
    (`add_special_tokens`, as LLaVA's tokenizer adds it); a chat template that writes its own special
    tokens is encoded without.

    The text is tokenized once, as LLaVA does, never segment by segment: a SentencePiece tokenizer
    encodes ` red` alone differently from ` red` after `ASSISTANT:`. A token is in the loss when it
    starts inside a loss segment; a token straddling a segment boundary is an error.
    """
    return encode_batch(tokenizer, [segments], add_special_tokens=add_special_tokens)[0]


def encode_batch(tokenizer, conversations: list[list[tuple[str, bool]]], *,
                 add_special_tokens: bool = True) -> list[tuple[list[int], list[bool]]]:
    """`encode` for many conversations in one tokenizer call."""
    texts = ["".join(s for s, _ in segments) for segments in conversations]
    enc = tokenizer(texts, return_offsets_mapping=True, add_special_tokens=add_special_tokens)
    return [(list(ids), _loss_mask(segments, text, offsets))
            for segments, text, ids, offsets in zip(conversations, texts, enc["input_ids"], enc["offset_mapping"])]


def _loss_mask(segments: list[tuple[str, bool]], text: str, offsets) -> list[bool]:
    spans, at = [], 0  # (start, end, in_loss) per segment
    for seg, loss in segments:
        spans.append((at, at + len(seg), loss))
        at += len(seg)
    cuts = {a for (_, a, x), (_, _, y) in zip(spans, spans[1:]) if x != y}
    mask = []
    for start, end in offsets:
        if any(start < c < end for c in cuts):
            raise ValueError(f"A token spans LLaVA's prompt/answer boundary in {text!r} (characters {start}-{end}); "
                             "this tokenizer cannot keep the answer's loss apart from the prompt.")
        # BOS (an empty span) is never trained on; any other token belongs to the segment it starts in
        mask.append(start < end and next(x for a, b, x in spans if a <= start < b))
    return mask
