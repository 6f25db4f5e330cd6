"""DPO examples as the trainer sees them: each side of a preference pair rendered and tokenized whole.

TRL's vision collator tokenizes prompt and answer separately and concatenates them, with the
checkpoint's chat template. For LLaVA-1.5 that is wrong twice over: llava-hf's template has no
system prompt and no `</s>`, and a SentencePiece tokenizer encodes the answer's first word
differently on its own. `PreferenceCollator` gives DPOTrainer the batch it expects (rows
[chosen..., rejected...]: input_ids, attention_mask, completion_mask, the processor's image
tensors) built from LLaVA's `preprocess_v1` strings, or from the checkpoint's template when the
config says `chat_template`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from seva_tasks.errors import InputError
from seva_tasks.llava.prompts import Template, conversation, encode_batch

COLUMNS = ("images", "prompt", "chosen", "rejected")  # TRL's conversational vision preference format


def texts(row: dict, side: str, template: Template, processor) -> tuple[str, str]:
    """(prompt, answer) strings of one side ("chosen"/"rejected") of a pair, as training tokenizes them.

    LLaVA templates: preprocess_v1 (`prompts.conversation`); `chat_template`: TRL's rendering with
    the checkpoint's template.
    """
    if template == "chat_template":
        from trl.data_utils import apply_chat_template, prepare_multimodal_messages

        ex = {"prompt": prepare_multimodal_messages(row["prompt"], images=row["images"]),
              **{k: prepare_multimodal_messages(row[k]) for k in ("chosen", "rejected")}}
        text = apply_chat_template(ex, processor)
        return text["prompt"], text[side]
    (prompt, _), (answer, _) = conversation([(_content(row["prompt"]), _content(row[side]))], template)
    return prompt, answer


def _content(messages: list[dict]) -> str:
    """The text of a one-message conversational column (string content or typed text parts)."""
    content = messages[-1]["content"]
    return content if isinstance(content, str) else " ".join(p["text"] for p in content if p.get("type") == "text")


def encode_pairs(pairs: list[tuple[str, str]], template: Template, tokenizer) -> list[tuple[list[int], list[bool]]]:
    """Token ids of each prompt + answer, tokenized as one string, and which carry loss (the answer's)."""
    return encode_batch(tokenizer, [[(prompt, False), (answer, True)] for prompt, answer in pairs],
                        add_special_tokens=template != "chat_template")  # a chat template writes its own BOS


@dataclass
class PreferenceCollator:
    """DPOTrainer's `data_collator`: each side's (prompt, answer) string tokenized whole by the
    processor, the completion mask from `encode_pairs` (checked against the processor's tokens)."""

    processor: Any
    template: Template = "vicuna_v1"
    max_length: int | None = None

    def __call__(self, examples: list[dict]) -> dict:
        rows = [(ex, side) for side in ("chosen", "rejected") for ex in examples]
        pieces = [texts(ex, side, self.template, self.processor) for ex, side in rows]
        encoded = encode_pairs(pieces, self.template, self.processor.tokenizer)
        strings = ["".join(p) for p in pieces]
        batch = self.processor(images=[ex["images"] for ex, _ in rows], text=strings, padding=True, padding_side="right",
                               add_special_tokens=self.template != "chat_template", return_tensors="pt")
        ids, attention = batch["input_ids"], batch["attention_mask"]
        completion = attention.new_zeros(attention.shape)
        for i, (tokens, loss) in enumerate(encoded):
            end, n = int(attention[i].sum()), sum(loss)
            if ids[i, end - n:end].tolist() != [t for t, x in zip(tokens, loss) if x]:
                raise ValueError(f"The processor tokenized the answer of pair side {rows[i][1]!r} differently than "
                                 f"the tokenizer alone: {strings[i][-120:]!r}. Report this with the model's processor files.")
            completion[i, end - n:end] = 1
        batch["completion_mask"] = completion
        if self.max_length is not None:  # keep_start, as TRL (the train stage checks that images survive)
            for k in ("input_ids", "attention_mask", "completion_mask"):
                batch[k] = batch[k][:, : self.max_length]
        return batch


def describe(batch: dict, processor, title: str) -> str:
    """A one-pair batch as text: the decoded prompt (image tokens collapsed), the chosen and rejected
    tokens (all in the loss), the image tensor's shape."""
    tok, image = processor.tokenizer, processor.image_token
    lines = [title]
    for i, side in enumerate(("chosen", "rejected")):
        keep = batch["attention_mask"][i].bool()
        ids, loss = batch["input_ids"][i][keep].tolist(), batch["completion_mask"][i][keep].tolist()
        start = loss.index(1)
        if i == 0:
            text = tok.decode(ids[:start])
            n = text.count(image)
            lines += [f"prompt ({start} tokens, no loss):", "  " + text.replace(image * n, f"{image}×{n}", 1)]
        lines += [f"{side} ({len(ids) - start} tokens, all in the loss):", "  " + " ".join(tok.convert_ids_to_tokens(ids[start:])),
                  f"  decoded: {tok.decode(ids[start:])!r}"]
    pixels = batch.get("pixel_values")
    lines.append(f"pixel_values: {tuple(pixels.shape)} {pixels.dtype} (chosen and rejected rows see the same image)"
                 if pixels is not None else "pixel_values: none")
    if (grid := batch.get("image_grid_thw")) is not None:  # dynamic resolution (Qwen2-VL): patches per image
        lines.append(f"image_grid_thw: {grid.tolist()}")
    return "\n".join(lines)


def load_pairs(pairs: Path, control: str = "none", seed: int = 0):
    """pairs.parquet -> a datasets.Dataset whose `images` ({bytes, path} cells, as the filter writes) decode to PIL.

    `control` (experiments' controls on the same pairs): `swapped` trains the noised answer as chosen;
    `shuffled` pairs each chosen answer with another row's rejected one (a seeded cyclic shift);
    `blank_image` shows a grey square instead of the image.
    """
    import io

    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    table = pq.read_table(pairs, memory_map=True)
    if control == "swapped":
        table = table.set_column(table.schema.get_field_index("chosen"), "chosen", table["rejected"]) \
                     .set_column(table.schema.get_field_index("rejected"), "rejected", table["chosen"])
    elif control == "shuffled" and table.num_rows > 1:
        shift = 1 + seed % (table.num_rows - 1)  # every row gets another row's rejected answer
        order = [(i + shift) % table.num_rows for i in range(table.num_rows)]
        table = table.set_column(table.schema.get_field_index("rejected"), "rejected", table["rejected"].take(order))
    elif control == "blank_image":
        buf = io.BytesIO()
        Image.new("RGB", (336, 336), (128, 128, 128)).save(buf, format="PNG")
        grey = [[{"bytes": buf.getvalue(), "path": None}] * len(cell) for cell in table["images"].to_pylist()]
        table = table.set_column(table.schema.get_field_index("images"), "images",
                                 pa.array(grey, type=table.schema.field("images").type))
    return datasets.Dataset(table).cast_column("images", datasets.Sequence(datasets.Image()))


def token_lengths(ds, template: Template, processor) -> tuple[list[int], list[int], int]:
    """Token counts as the collator builds them: (prompt incl. image tokens, longest answer, most tokens of an image)."""
    import datasets

    raw = ds.cast_column("images", datasets.Sequence(datasets.Image(decode=False)))
    rows = list(raw.select_columns(list(COLUMNS)))
    image_tokens = _image_tokens(processor, ds, rows)
    pieces = {side: [texts(row, side, template, processor) for row in rows] for side in ("chosen", "rejected")}
    for i, (row, (prompt, _)) in enumerate(zip(rows, pieces["chosen"])):
        if prompt.count(processor.image_token) != len(row["images"]):
            raise InputError(f"A literal {processor.image_token!r} in the text, or a number of images other than "
                             f"the prompt's, in pair {i}: {prompt[-200:]!r}. The prompt must be the bare question (the "
                             "image goes in `images`); fix the sample/filter stage output and rerun.")
    loss = {side: [mask for _, mask in encode_pairs(pieces[side], template, processor.tokenizer)] for side in pieces}
    p_len = [mask.count(False) + sum(n - 1 for n in tokens) for mask, tokens in zip(loss["chosen"], image_tokens)]
    a_len = [max(c.count(True), r.count(True)) for c, r in zip(loss["chosen"], loss["rejected"])]
    return p_len, a_len, max(max(t, default=0) for t in image_tokens)


def _image_tokens(processor, ds, rows: list[dict]) -> list[list[int]]:
    """Tokens each row's images expand to. A dynamic-resolution processor (Qwen2-VL) counts them from the
    image's size (its merged patches, read from the file's header); otherwise every image gets the count
    the processor gives the first one (LLaVA-1.5's fixed-size input)."""
    import io

    from PIL import Image

    images = processor.image_processor
    if not hasattr(images, "get_number_of_image_patches"):
        first = ds[0]["images"][0]
        n = processor(images=[first], text=processor.image_token)["input_ids"][0].count(processor.image_token_id)
        return [[n] * len(row["images"]) for row in rows]

    def count(cell: dict) -> int:
        with Image.open(io.BytesIO(cell["bytes"]) if cell["bytes"] is not None else cell["path"]) as im:
            w, h = im.size
        return images.get_number_of_image_patches(h, w, {}) // images.merge_size**2

    return [[count(cell) for cell in row["images"]] for row in rows]
