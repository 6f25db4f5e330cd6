"""The tiny LLaVA: CLIP vision tower + Llama text model, its own tokenizer, llava-hf's files.

Every file is llava-hf's (`llava-hf/llava-1.5-7b-hf`) but for its sizes: config, `preprocessor_config.json`
(CLIPImageProcessor: bicubic, OpenAI-CLIP mean/std), `processor_config.json`, `chat_template.json` with
llava-hf's template verbatim, and a Llama-style tokenizer (SentencePiece-like BPE with byte fallback,
`<unk> <s> </s>` = 0 1 2, the 256 byte tokens, then `<image>` and `<pad>` added after the vocabulary),
so transformers and vLLM load it as they load the real checkpoint, and every quirk of that format (no
system prompt and no `</s>` in the chat template, `▁`-prefixed words) shows up in tests. The vocabulary
is the toy world's own; the weights are random (seeded); the `pretrain` stage teaches the model to see.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from seva_tasks.benchmarks.mme import YES_NO
from seva_tasks.benchmarks.vizwiz import UNANSWERABLE
from seva_tasks.llava.prompts import IMAGE_TOKEN, OPTION_LETTER, SHORT_ANSWER, SYSTEMS, conv_prompt

if TYPE_CHECKING:
    from seva_tasks.toy.world import ToyConfig

# Benchmark prompt phrases, so the tokenizer learns them as few tokens (toy benchmarks reuse them).
PHRASES = (
    SHORT_ANSWER, OPTION_LETTER, YES_NO.strip(), UNANSWERABLE,
    "Reference OCR token:", "Context:", "Is there a", "in the image?", "A. B. C. D. Yes No yes no",
)

SPECIAL = ("<unk>", "<s>", "</s>")  # ids 0-2, Llama's layout; the byte tokens <0x00>..<0xFF> follow
ADDED = (IMAGE_TOKEN, "<pad>")  # after the vocabulary, as llava-hf adds them (32000, 32001 there)

# llava-hf/llava-1.5-7b-hf's chat_template.json, verbatim: no system prompt, and an assistant turn ends
# in a space, not `</s>`. seva renders LLaVA's own strings (seva_tasks.llava.prompts) instead; this is
# here so the toy model carries what real checkpoints carry.
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}"
    "{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


def prompt(question: str, *, image: bool = True) -> str:
    """The single-turn vicuna_v1 prompt string LLaVA-1.5 uses: system, USER: <image>\\n{q} ASSISTANT:"""
    return conv_prompt(question, "vicuna_v1") if image else f"{SYSTEMS['vicuna_v1']} USER: {question} ASSISTANT:"


def corpus(rows: list[dict], scenes: list[dict]) -> list[str]:
    """Every text the toy world contains, in a fixed order (the tokenizer's training data)."""
    texts = [SYSTEMS["vicuna_v1"], SYSTEMS["llava_v1"], *PHRASES]
    # each turn as the model reads it, so the role words become tokens of their own
    texts += [f"{'USER' if t['from'] == 'human' else 'ASSISTANT'}: {t['value']}" for r in rows for t in r["conversations"]]
    texts += [s["caption"] for s in scenes]
    return [t.replace(IMAGE_TOKEN, "") for t in texts]  # `<image>` is an added token, never BPE pieces


def _train_tokenizer(texts: list[str], vocab_size: int, split_punctuation: bool = False):
    """Llama's tokenizer at toy size: BPE over `▁`-prefixed words with byte fallback (a character
    outside printable ASCII, `\\n` included, becomes its UTF-8 byte tokens, as in Llama). With
    `split_punctuation`, training keeps punctuation and newlines out of every merge ("circle?" is "circle" "?")."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=True)
    if split_punctuation:
        tok.pre_tokenizer = pre_tokenizers.Sequence([tok.pre_tokenizer, pre_tokenizers.Punctuation("isolated"),
                                                     pre_tokenizers.Split("\n", "isolated")])
    alphabet = [chr(c) for c in range(33, 127)] + ["\u2581"]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - 256, special_tokens=list(SPECIAL), show_progress=False,
                                  initial_alphabet=alphabet, limit_alphabet=len(alphabet))
    tok.train_from_iterator(texts, trainer=trainer)
    spec = json.loads(tok.to_str())
    learned = sorted(spec["model"]["vocab"].items(), key=lambda kv: kv[1])
    order = [*SPECIAL, *(f"<0x{b:02X}>" for b in range(256)), *(t for t, _ in learned if t not in SPECIAL)]
    spec["model"]["vocab"] = {t: i for i, t in enumerate(order)}
    spec["added_tokens"] = []
    # Llama's (legacy=False) pipeline as transformers converts it: one Metaspace pass over the text,
    # decoding ▁ -> space, bytes -> UTF-8, minus the prepended space.
    spec["pre_tokenizer"] = {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first", "split": False}
    spec["decoder"] = {"type": "Sequence", "decoders": [
        {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "}, {"type": "ByteFallback"},
        {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}
    tok = Tokenizer.from_str(json.dumps(spec))
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL + ADDED])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", model_max_length=2048, padding_side="left")


def llava_config(cfg: ToyConfig, vocab: int):
    """LLaVA-1.5's wiring (penultimate CLIP layer, CLS dropped, 2-layer GELU projector) at toy size;
    `vocab` counts the added `<image>` and `<pad>`, the last two ids."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    image_id, pad_id = (vocab - len(ADDED) + ADDED.index(t) for t in (IMAGE_TOKEN, "<pad>"))

    heads, width = cfg.lm_heads or cfg.hidden_size // 32, cfg.vision_hidden_size or cfg.hidden_size
    vision = CLIPVisionConfig(hidden_size=width, intermediate_size=4 * width,
                              num_hidden_layers=cfg.vision_layers or cfg.layers, num_attention_heads=width // 32,
                              image_size=cfg.image_size, patch_size=cfg.patch_size, projection_dim=width,
                              initializer_range=cfg.init_std)
    text = LlamaConfig(hidden_size=cfg.hidden_size, intermediate_size=4 * cfg.hidden_size,
                       num_hidden_layers=cfg.layers, num_attention_heads=heads, num_key_value_heads=heads, head_dim=32,
                       vocab_size=vocab, max_position_embeddings=2048, rms_norm_eps=1e-5,
                       initializer_range=cfg.init_std, bos_token_id=1, eos_token_id=2, pad_token_id=pad_id,
                       tie_word_embeddings=False)
    return LlavaConfig(vision_config=vision, text_config=text, image_token_index=image_id, pad_token_id=pad_id,
                       vision_feature_layer=-2, vision_feature_select_strategy="default",
                       image_seq_length=cfg.image_tokens, projector_hidden_act="gelu", tie_word_embeddings=False)


def _processor(cfg: ToyConfig, tokenizer):
    """CLIP preprocessing at toy size; patch/CLS settings make `<image>` expand to image_tokens."""
    from transformers import CLIPImageProcessor, LlavaProcessor

    images = CLIPImageProcessor(size={"shortest_edge": cfg.image_size}, resample=3,  # bicubic, as llava-hf
                                crop_size={"height": cfg.image_size, "width": cfg.image_size})
    return LlavaProcessor(image_processor=images, tokenizer=tokenizer, patch_size=cfg.patch_size,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1,
                          chat_template=CHAT_TEMPLATE, image_token=IMAGE_TOKEN)


def _as_llava_hf(out: Path) -> None:
    """Rewrite transformers' save layout into llava-hf's: `preprocessor_config.json` beside a flat
    `processor_config.json`, `chat_template.json`, and LlamaTokenizer's tokenizer_config keys."""
    proc = json.loads((out / "processor_config.json").read_text())
    images = {**proc.pop("image_processor"), "processor_class": "LlavaProcessor"}
    (out / "preprocessor_config.json").write_text(json.dumps(images, indent=2, sort_keys=True) + "\n")
    (out / "processor_config.json").write_text(json.dumps(proc, indent=2, sort_keys=True) + "\n")
    template = out / "chat_template.jinja"
    (out / "chat_template.json").write_text(json.dumps({"chat_template": template.read_text()}, indent=2) + "\n")
    template.unlink()
    tok = json.loads((out / "tokenizer_config.json").read_text())
    tok.pop("chat_template", None)
    tok.update(tokenizer_class="LlamaTokenizer", add_bos_token=True, add_eos_token=False, legacy=False,
               clean_up_tokenization_spaces=False, use_default_system_prompt=False)
    (out / "tokenizer_config.json").write_text(json.dumps(tok, indent=2, sort_keys=True) + "\n")


def save_model(cfg: ToyConfig, texts: list[str], out: Path) -> None:
    """Train the tokenizer, draw seeded float32 weights, and save everything under `out`."""
    import torch
    from safetensors.torch import save_file
    from transformers import GenerationConfig, LlavaForConditionalGeneration

    from seva_tasks.llava.weights import checkpoint_names

    tokenizer = _train_tokenizer(texts, cfg.vocab_size, cfg.split_punctuation)
    config = llava_config(cfg, len(tokenizer))
    with torch.random.fork_rng():  # seed the weights without disturbing the caller's RNG
        torch.manual_seed(cfg.seed)
        model = LlavaForConditionalGeneration(config).float().eval()
    out.mkdir(parents=True)
    config.architectures = ["LlavaForConditionalGeneration"]  # vLLM picks its model class by this name
    config.save_pretrained(out)
    GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=config.pad_token_id, do_sample=False).save_pretrained(out)
    save_file(checkpoint_names(model.state_dict()), str(out / "model.safetensors"), metadata={"format": "pt"})
    _processor(cfg, tokenizer).save_pretrained(out)
    _as_llava_hf(out)
