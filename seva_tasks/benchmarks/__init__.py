"""The ten LLaVA-1.5 benchmarks: load from LLaVA's `playground/data/eval/<dir>` layout, build the
prompts LLaVA-1.5's scripts build, and score answers on the papers' scale.

    seva score pope --data playground/data/eval/pope --answers answers.jsonl

Each module (pope, mme, ...) satisfies `Benchmark`: NAME, DIR (its folder under
playground/data/eval), MAX_NEW_TOKENS, `load(data_dir) -> [Question]`,
`score(data_dir, answers, judge=None) -> Scored`, `write_toy(out_dir, scenes, rng_seed, render)`
(the toy world's files in the same layout; `seva_tasks.toy.benchmarks` calls it, this package
never imports the toy world).
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Protocol

from seva_tasks.benchmarks.common import Answer, Question, Scored, read_answers
from seva_tasks.benchmarks.toyscenes import Render
from seva_tasks.errors import ConfigError

__all__ = ["BENCHMARKS", "Answer", "Benchmark", "Question", "Scored", "get", "load_questions", "read_answers",
           "score_answers", "score_file"]

from seva_tasks.benchmarks import gqa, llava_bench, mmbench, mme, mmvet, pope, seed, sqa, textvqa, vizwiz  # noqa: E402

# `seva score` names, in the order papers list them. Imported, not looked up by string: the stages'
# code digests (seva_tasks/fingerprint.py) follow imports, so editing a scorer invalidates its scores.
MODULES: dict[str, ModuleType] = {m.NAME: m for m in (pope, mme, gqa, textvqa, sqa, seed, mmbench, vizwiz, mmvet, llava_bench)}
BENCHMARKS = tuple(MODULES)


class Benchmark(Protocol):
    NAME: str
    DIR: str
    MAX_NEW_TOKENS: int

    def load(self, data_dir: Path) -> list[Question]: ...
    def score(self, data_dir: Path, answers: list[Answer], judge=None) -> Scored: ...
    def write_toy(self, out_dir: Path, scenes: list[dict], rng_seed: int, render: Render) -> None: ...


def get(name: str) -> ModuleType:
    """The benchmark module called `name` (a `seva score` name)."""
    if name not in BENCHMARKS:
        raise ConfigError(f"Unknown benchmark {name!r}. Known: {', '.join(BENCHMARKS)}.")
    return MODULES[name]


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
