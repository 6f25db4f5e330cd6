"""The tiny LLaVA: CLIP vision tower + Llama text model, its own BPE tokenizer, the vicuna chat template.

Its files follow llava-hf's formats (config, processor and tokenizer configs, chat template,
safetensors with llava-hf names), so transformers and vLLM load it as they load real checkpoints.
The weights are random (seeded); the `pretrain` stage teaches the model to see.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from seva_tasks.benchmarks.mme import YES_NO
from seva_tasks.benchmarks.vizwiz import UNANSWERABLE
from seva_tasks.llava.prompts import OPTION_LETTER, SHORT_ANSWER, SYSTEMS

if TYPE_CHECKING:
    from seva_tasks.toy.world import ToyConfig

_SYSTEM = SYSTEMS["vicuna_v1"]  # LLaVA-1.5 evaluates with this template

# Benchmark prompt phrases, so the tokenizer learns them as few tokens (toy benchmarks reuse them).
PHRASES = (
    SHORT_ANSWER, OPTION_LETTER, YES_NO.strip(), UNANSWERABLE,
    "Reference OCR token:", "Context:", "Is there a", "in the image?", "A. B. C. D. Yes No yes no",
)

SPECIAL = ("<unk>", "<s>", "</s>", "<pad>", "<image>")  # ids 0-4, in this order

# Vicuna v1 as LLaVA-1.5 evaluates it; message content may be a string or HF's typed parts.
# No BOS here: the tokenizer adds it when the rendered prompt is encoded (as llava-hf does).
CHAT_TEMPLATE = (
    "{%- set ns = namespace(system='" + _SYSTEM.replace("'", "\\'") + "') -%}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set ns.system = messages[0]['content'] if messages[0]['content'] is string "
    "else messages[0]['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') | join(' ') -%}"
    "{%- endif -%}"
    "{{- ns.system + ' ' -}}"
    "{%- for m in messages if m['role'] != 'system' -%}"
    "{{- 'USER: ' if m['role'] == 'user' else 'ASSISTANT: ' -}}"
    "{%- if m['content'] is string -%}{{- m['content'] -}}{%- else -%}"
    "{%- for p in m['content'] if p['type'] == 'image' -%}{{- '<image>\n' -}}{%- endfor -%}"
    "{%- for p in m['content'] if p['type'] == 'text' -%}{{- p['text'] -}}{%- endfor -%}"
    "{%- endif -%}"
    "{{- ' ' if m['role'] == 'user' else '</s>' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'ASSISTANT:' -}}{%- endif -%}"
)


def prompt(question: str, *, image: bool = True) -> str:
    """The single-turn vicuna_v1 prompt string LLaVA-1.5 uses: system, USER: <image>\\n{q} ASSISTANT:"""
    placeholder = "<image>\n" if image else ""
    return f"{_SYSTEM} USER: {placeholder}{question} ASSISTANT:"


def corpus(rows: list[dict], scenes: list[dict]) -> list[str]:
    """Every text the toy world contains, in a fixed order (the tokenizer's training data)."""
    texts = [_SYSTEM, "USER: ASSISTANT:", *PHRASES]
    texts += [t["value"] for r in rows for t in r["conversations"]]
    texts += [s["caption"] for s in scenes]
    return texts


def _train_tokenizer(texts: list[str], vocab_size: int):
    """Byte-level BPE with LLaMA's special tokens (<unk> <s> </s>), <pad> and <image>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    # Printable ASCII and newline only: a random model then samples readable text (never half a
    # UTF-8 character), and other characters encode as <unk> instead of vanishing.
    ascii_ = "".join(map(chr, range(32, 127))) + "\n"
    alphabet = [c for piece, _ in pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
                .pre_tokenize_str(ascii_) for c in piece]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL), show_progress=False,
                                  initial_alphabet=alphabet, limit_alphabet=len(alphabet))
    tok.train_from_iterator(texts, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", model_max_length=2048, padding_side="left")


def llava_config(cfg: ToyConfig, vocab: int):
    """LLaVA-1.5's wiring (penultimate CLIP layer, CLS dropped, 2-layer GELU projector) at toy size."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    heads = cfg.hidden_size // 32
    vision = CLIPVisionConfig(hidden_size=cfg.hidden_size, intermediate_size=4 * cfg.hidden_size,
                              num_hidden_layers=cfg.layers, num_attention_heads=heads, image_size=cfg.image_size,
                              patch_size=cfg.patch_size, projection_dim=cfg.hidden_size,
                              initializer_range=cfg.init_std)
    text = LlamaConfig(hidden_size=cfg.hidden_size, intermediate_size=4 * cfg.hidden_size,
                       num_hidden_layers=cfg.layers, num_attention_heads=heads, num_key_value_heads=heads,
                       vocab_size=vocab, max_position_embeddings=2048, rms_norm_eps=1e-5,
                       initializer_range=cfg.init_std, bos_token_id=1, eos_token_id=2, pad_token_id=3,
                       tie_word_embeddings=False)
    return LlavaConfig(vision_config=vision, text_config=text, image_token_index=SPECIAL.index("<image>"),
                       vision_feature_layer=-2, vision_feature_select_strategy="default",
                       image_seq_length=cfg.image_tokens, projector_hidden_act="gelu", tie_word_embeddings=False)


def _processor(cfg: ToyConfig, tokenizer):
    """CLIP preprocessing at toy size; patch/CLS settings make `<image>` expand to image_tokens."""
    from transformers import CLIPImageProcessor, LlavaProcessor

    images = CLIPImageProcessor(size={"shortest_edge": cfg.image_size},
                                crop_size={"height": cfg.image_size, "width": cfg.image_size})
    return LlavaProcessor(image_processor=images, tokenizer=tokenizer, patch_size=cfg.patch_size,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1,
                          chat_template=CHAT_TEMPLATE, image_token="<image>")


def save_model(cfg: ToyConfig, texts: list[str], out: Path) -> None:
    """Train the tokenizer, draw seeded float32 weights, and save everything under `out`."""
    import torch
    from safetensors.torch import save_file
    from transformers import GenerationConfig, LlavaForConditionalGeneration

    from seva_tasks.llava.weights import checkpoint_names

    tokenizer = _train_tokenizer(texts, cfg.vocab_size)
    tokenizer.chat_template = CHAT_TEMPLATE
    config = llava_config(cfg, len(tokenizer))
    with torch.random.fork_rng():  # seed the weights without disturbing the caller's RNG
        torch.manual_seed(cfg.seed)
        model = LlavaForConditionalGeneration(config).float().eval()
    out.mkdir(parents=True)
    config.architectures = ["LlavaForConditionalGeneration"]  # vLLM picks its model class by this name
    config.save_pretrained(out)
    GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=3, do_sample=False).save_pretrained(out)
    save_file(checkpoint_names(model.state_dict()), str(out / "model.safetensors"), metadata={"format": "pt"})
    _processor(cfg, tokenizer).save_pretrained(out)
