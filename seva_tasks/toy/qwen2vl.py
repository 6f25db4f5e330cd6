"""The tiny Qwen2-VL: a random `Qwen2VLForConditionalGeneration` built from config, with its own
byte-level BPE tokenizer (Qwen's special tokens and chat template) and Qwen's processor files.

    .venv/bin/python -c "from seva_tasks.toy import qwen2vl; print(qwen2vl.ensure())"

Built on demand into `<toy root>/qwen2vl-model` (not part of world.json: the LLaVA world's digest, and
so every cached LLaVA stage, stays as it was). The tokenizer learns the toy world's corpus
(`model.corpus`); the weights are seeded and random (no pretraining: answers are noise, but the same
noise in transformers and vLLM). Sizes follow DESIGN §8's probe: text width 128, 2 layers, 2 heads
of 64 (a head_dim vLLM's CPU attention supports), mrope [8, 12, 12]; vision depth 2, width 64, patch
14, merge 2; 56²..112² pixels, so an image is 4..16 tokens.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from filelock import FileLock

from seva_tasks.store import publish_dir
from seva_tasks.toy import model, world

DIR = "qwen2vl-model"
STAMP = "seva-toy.json"  # written last: identity (this code + the world's identity)

# Qwen2's special tokens in Qwen's order (151643.. there), after the learned vocabulary
SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
           "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
           "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")

# Qwen/Qwen2-VL-7B-Instruct's chat_template.json, verbatim
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' or 'image' in "
    "content or 'image_url' in content %}{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] "
    "== 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content %}"
    "{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "<|im_start|>assistant\n{% endif %}"
)
# the chat template's own words, so the roles and the default system prompt are few tokens
TEMPLATE_TEXTS = ("system\nYou are a helpful assistant.", "user\n", "assistant\n")
MIN_PIXELS, MAX_PIXELS = 56 * 56, 112 * 112  # 4..16 image tokens (one token per 28×28 after the 2×2 merge)


def _train_tokenizer(texts: list[str], vocab_size: int):
    """Qwen2's tokenizer at toy size: byte-level BPE (GPT-2 bytes-to-unicode, no unknown token), special
    tokens added after the vocabulary, EOS `<|im_end|>`, pad `<|endoftext|>`, no BOS."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([*TEMPLATE_TEXTS, *texts], trainer=trainer)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   model_max_length=2048, padding_side="left")


def qwen2vl_config(tokenizer, cfg: world.ToyConfig):
    """Qwen2-VL's wiring at toy size; token ids are the tokenizer's."""
    from transformers import Qwen2VLConfig

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL}
    text = dict(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=2048, rms_norm_eps=1e-6,
                initializer_range=cfg.init_std, bos_token_id=ids["<|endoftext|>"],
                eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"], tie_word_embeddings=False,
                rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [8, 12, 12]})
    vision = dict(depth=2, embed_dim=64, hidden_size=128, num_heads=2, mlp_ratio=4, patch_size=14,
                  spatial_merge_size=2, temporal_patch_size=2, initializer_range=cfg.init_std)
    return Qwen2VLConfig(text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
                         video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                         vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=False)


def _processor(tokenizer):
    """Qwen2VLProcessor: the image processor at toy pixel bounds, the tokenizer, a video processor (the
    processor class requires one; vLLM never gets videos here) and the chat template."""
    from transformers import Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor

    images = Qwen2VLImageProcessor(size={"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS})
    return Qwen2VLProcessor(image_processor=images, tokenizer=tokenizer, video_processor=Qwen2VLVideoProcessor(),
                            chat_template=CHAT_TEMPLATE)


def save_model(cfg: world.ToyConfig, texts: list[str], out: Path) -> None:
    """Train the tokenizer, draw seeded float32 weights, save config, safetensors and processor files under `out`."""
    import torch
    from transformers import GenerationConfig, Qwen2VLForConditionalGeneration

    tokenizer = _train_tokenizer(texts, cfg.vocab_size)
    config = qwen2vl_config(tokenizer, cfg)
    with torch.random.fork_rng():  # seed the weights without disturbing the caller's RNG
        torch.manual_seed(cfg.seed)
        qwen = Qwen2VLForConditionalGeneration(config).float().eval()
    config.architectures = ["Qwen2VLForConditionalGeneration"]  # vLLM picks its model class by this name
    qwen.config.architectures = config.architectures
    qwen.generation_config = GenerationConfig(  # Qwen2-VL-Instruct stops at <|im_end|> or <|endoftext|>
        eos_token_id=[config.text_config.eos_token_id, config.text_config.pad_token_id],
        pad_token_id=config.text_config.pad_token_id, do_sample=False)
    qwen.save_pretrained(out)  # safetensors
    _processor(tokenizer).save_pretrained(out)


_CODE = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]


def model_dir(cfg: world.ToyConfig) -> Path:
    """Where the tiny Qwen2-VL lives: inside the toy root, beside the tiny LLaVA's `model/`."""
    return world.root_dir(cfg) / DIR


def ensure(cfg: world.ToyConfig | None = None) -> Path:
    """Build the tiny Qwen2-VL (once per world and code) and return its directory."""
    cfg = cfg or world.ToyConfig()
    root = world.ensure(cfg)
    out, identity = model_dir(cfg), {"code": _CODE, "world": json.loads((root / world.WORLD).read_text())["identity"]}

    def current() -> bool:
        try:
            return json.loads((out / STAMP).read_text()) == identity
        except (OSError, ValueError):
            return False

    if current():
        return out
    with FileLock(root / f".{DIR}.lock"):
        if current():
            return out
        tmp = root / f".{DIR}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            rows = json.loads(world.mix_path(cfg).read_text())
            save_model(cfg, model.corpus(rows, world.load_scenes(cfg)), tmp)
            (tmp / STAMP).write_text(json.dumps(identity))
            publish_dir(tmp, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out
