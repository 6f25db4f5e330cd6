"""The ten LLaVA-1.5 benchmarks: load from LLaVA's `playground/data/eval/<dir>` layout, build the
prompts LLaVA-1.5's scripts build, and score answers on the papers' scale.

    seva score pope --data playground/data/eval/pope --answers answers.jsonl

Each module (pope, mme, ...) satisfies `Benchmark`: NAME, DIR (its folder under
playground/data/eval), MAX_NEW_TOKENS, `load(data_dir) -> [Question]`,
`score(data_dir, answers, judge=None) -> Scored`, `write_toy(out_dir, scenes, rng_seed)`.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import Protocol

from seva_tasks.benchmarks.common import Answer, Question, Scored, read_answers
from seva_tasks.errors import ConfigError

__all__ = ["BENCHMARKS", "Answer", "Benchmark", "Question", "Scored", "get", "load_questions", "read_answers",
           "score_answers", "score_file", "write_toy_world"]

# `seva score` names, in the order papers list them.
BENCHMARKS = ("pope", "mme", "gqa", "textvqa", "sqa", "seed", "mmbench", "vizwiz", "mmvet", "llava_bench")


class Benchmark(Protocol):
    NAME: str
    DIR: str
    MAX_NEW_TOKENS: int

    def load(self, data_dir: Path) -> list[Question]: ...
    def score(self, data_dir: Path, answers: list[Answer], judge=None) -> Scored: ...
    def write_toy(self, out_dir: Path, scenes: list[dict], rng_seed: int) -> None: ...


def get(name: str) -> ModuleType:
    """The benchmark module called `name` (a `seva score` name)."""
    if name not in BENCHMARKS:
        raise ConfigError(f"Unknown benchmark {name!r}. Known: {', '.join(BENCHMARKS)}.")
    return importlib.import_module(f"seva_tasks.benchmarks.{name}")


def needs_judge(name: str) -> bool:
    return getattr(get(name), "NEEDS_JUDGE", False)


def load_questions(name: str, data_dir: Path) -> list[Question]:
    """The prompts to generate answers for, in question-file order."""
    return get(name).load(Path(data_dir))


def score_answers(name: str, data_dir: Path, answers: list[Answer], judge=None) -> Scored:
    """Score in-memory answers; `judge` is a `seva_tasks.judge.Judge` (MM-Vet, LLaVA-Bench, MMBench fallback)."""
    return get(name).score(Path(data_dir), answers, judge)


def score_file(benchmark: str, data_dir: Path, answers: Path, judge=None) -> dict:
    """`seva score`: {"benchmark": NAME, "metrics": {flat names}} (+ "judge": identity when one was used).

    `judge` may be a JudgeConfig (a client is opened and closed here) or a Judge. A malformed answer
    file raises InputError naming the file, line and reason.
    """
    from seva_tasks.benchmarks.judge import Judge, JudgeConfig

    mod = get(benchmark)
    parsed = read_answers(Path(answers))
    own = isinstance(judge, JudgeConfig)
    client = Judge(judge) if own else judge
    try:  # MM-Vet and LLaVA-Bench raise a ConfigError saying how to pass a judge when there is none
        scored = mod.score(Path(data_dir), parsed, client)
    finally:
        if own:
            client.close()
    out = {"benchmark": benchmark, "metrics": scored.metrics}
    if client is not None:
        out["judge"] = client.identity()
    return out


def write_toy_world(root: Path, seed: int, n_shapes: int = 24, n_signs: int = 8, n_books: int = 4) -> dict[str, Path]:
    """Every benchmark in its real layout under `root/<DIR>` from held-out toy scenes; returns name -> dir."""
    from seva_tasks.benchmarks import toyscenes

    scenes = toyscenes.draw(n_shapes, n_signs, n_books, seed)
    out = {}
    for i, name in enumerate(BENCHMARKS):
        mod = get(name)
        mod.write_toy(Path(root) / mod.DIR, scenes, seed * 1000 + i)
        out[name] = Path(root) / mod.DIR
    return out
