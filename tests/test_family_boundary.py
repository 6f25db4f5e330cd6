"""No LLaVA-1.5 constant outside the family packages (issue 16, DESIGN §8): code elsewhere asks
`family(model)` and dispatches. A grep over the code itself (names, attributes, string and number
literals; docstrings, comments and Field descriptions are documentation and may name LLaVA)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "seva_tasks"
# Where LLaVA's (and Qwen's) constants live: the family packages, and the toy world, which writes
# LLaVA-1.5's data formats and builds the tiny LLaVA and Qwen2-VL models.
FAMILY_CODE = ("llava/", "qwen2vl/", "toy/")
LLAVA_ONLY = re.compile(r"multi_modal_projector|vision_feature_layer|vision_feature_select_strategy|CLIPImageProcessor"
                        r"|image_token_index|expand2square|LlavaMultiModalProjector|\bUSER:|\bASSISTANT:")
LLAVA_NUMBERS = {576, 336}  # LLaVA-1.5's image tokens and CLIP side

# file -> the hits allowed there, and why
EXCEPTIONS = {
    # The toy LLaVA's pretraining stage: it builds LLaVA-1.5's training sequences for the tiny LLaVA only.
    "stages/pretrain.py": {"image_token_index"},
    # transformers < 5 named LLaVA's image token `image_token_index` (llava-hf checkpoints' config.json still do).
    "engines/hf.py": {"image_token_index"},
    "engines/vllm_worker.py": {"image_token_index"},
    # The `blank_image` control's grey square: any family's processor resizes it; 336 is only its size.
    "preference.py": {"336"},
    # Pixel-mode and torchvision augmentations write LLaVA-1.5-sized squares (configurable; exact mode,
    # the one the Qwen2-VL preset uses, ignores image_size).
    "stages/augment.py": {"336"},
    # filter.images=padded is LLaVA-1.5's pad-to-square, delegated to seva_tasks.llava.images
    # (toy-qwen2vl sets images: original).
    "stages/filter.py": {"expand2square"},
}


def _documentation(tree: ast.AST) -> set[int]:
    """ids of string nodes that are docstrings or `description=` texts."""
    out = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            out.add(id(body[0].value))
        if isinstance(node, ast.keyword) and node.arg == "description":
            out |= {id(n) for n in ast.walk(node.value)}
    return out


def _hits(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    docs = _documentation(tree)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and id(node) not in docs:
            if isinstance(node.value, str):
                found |= set(LLAVA_ONLY.findall(node.value))
            elif type(node.value) is int and node.value in LLAVA_NUMBERS:
                found.add(str(node.value))
        elif isinstance(node, ast.Name | ast.Attribute | ast.alias):
            text = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else node.name
            found |= set(LLAVA_ONLY.findall(text))
    return found


def test_no_llava_constant_outside_the_family_packages():
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel.startswith(FAMILY_CODE):
            continue
        if hits := _hits(path) - EXCEPTIONS.get(rel, set()):
            found[rel] = sorted(hits)
    assert found == {}, f"LLaVA-only constants outside seva_tasks/llava/ (move them there and dispatch on family()): {found}"


def test_every_exception_is_still_needed():
    stale = {rel: sorted(allowed - _hits(PACKAGE / rel)) for rel, allowed in EXCEPTIONS.items()}
    assert {k: v for k, v in stale.items() if v} == {}


def test_the_grep_sees_code_but_not_documentation(tmp_path):
    f = tmp_path / "m.py"
    f.write_text('"""Mentions multi_modal_projector and USER: freely."""\n'
                 'from pydantic import Field\n'
                 'x = Field(1, description="LLaVA\'s multi_modal_projector")\n'
                 'def g(m):\n    """vision_feature_layer in a docstring."""\n'
                 '    return m.vision_feature_layer, "USER: hi", 576\n')
    assert _hits(f) == {"vision_feature_layer", "USER:", "576"}
