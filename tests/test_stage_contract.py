"""The stage contract, as a contributor meets it: edit a stage's code in a copy of the project, and
`seva status` shows that stage and everything downstream stale (and only those); a rerun recomputes
exactly those. Also: the layout's promises (no stage imports another, no module over ~400 lines).
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from seva_tasks import pipeline
from seva_tasks.config import ROOT, load_config
from seva_tasks.fingerprint import code_digest

STAGE_DIR = ROOT / "seva_tasks" / "stages"
# Small and fast, but every stage runs for real: a 2-step pretrain (so clean and noised answers still
# differ and pairs survive the filter), 6+6 rows, two benchmarks.
OVERRIDES = [
    "pretrain.steps=2", "pretrain.heldout=0", "pretrain.extra={}", "augment.noise_step=999",  # a near-random model: answers differ
    "sample.subsets={ocr_vqa: {images: 6, questions_per_image: 1}, textvqa: {images: 6, questions_per_image: 1}}",
    "generate.max_new_tokens=8", "filter.mode=seva", "train.max_steps=2", "evaluate.benchmarks=[pope, mme]",
    "generate.engine.kind=hf", "evaluate.engine.kind=hf",  # no vLLM start-ups: the contract, not the engine, is tested
]


def test_no_stage_imports_another_stage():
    stages = {p.stem for p in STAGE_DIR.glob("*.py") if p.stem != "__init__"}
    for path in STAGE_DIR.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [f"{node.module}.{a.name}" for a in node.names] + [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
            for name in names:
                assert not any(name == f"seva_tasks.stages.{s}" or name.startswith(f"seva_tasks.stages.{s}.")
                               for s in stages), f"{path.name} imports {name}"


def test_every_stage_hook_takes_its_config():
    """`fingerprint` in a stage module is its hook (`Stage.external` calls it with the stage config): an imported
    helper of that name is called as one (generate once imported seva_tasks.fingerprint's under it)."""
    for preset in ("toy", "toy-miniature"):
        cfg = load_config(preset, {})
        for stage in pipeline.STAGES.values():
            if (section := stage.config(cfg)) is not None:
                assert isinstance(stage.external(section), (dict, type(None))), stage.name


def test_modules_stay_small():
    big = {p.relative_to(ROOT).as_posix(): n for d in ("seva_tasks", "flows") for p in (ROOT / d).rglob("*.py")
           if (n := len(p.read_text().splitlines())) > 400}
    assert not big, big


def test_code_digest_covers_the_libraries_a_stage_imports(tmp_path, monkeypatch):
    """A stage's key changes with its own source and with a project module it imports, function-local included."""
    import seva_tasks.fingerprint as F

    src = tmp_path / "seva_tasks"
    shutil.copytree(ROOT / "seva_tasks", src, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(F, "_SRC", src)
    F.code_digest.cache_clear()
    try:
        before = {n: code_digest(f"seva_tasks.stages.{n}") for n in ("filter", "generate", "sample")}
        with open(src / "engines" / "pool.py", "a") as f:  # generate imports the pool inside run()
            f.write("\n# an edit\n")
        F.code_digest.cache_clear()
        after = {n: code_digest(f"seva_tasks.stages.{n}") for n in before}
    finally:
        F.code_digest.cache_clear()
    assert after["generate"] != before["generate"]
    assert after["filter"] == before["filter"] and after["sample"] == before["sample"]


def test_status_names_the_model_stages_by_content(tmp_path):
    """Moving the same weights elsewhere keeps the keys; changing a byte does not."""
    model = tmp_path / "m1"
    model.mkdir()
    (model / "config.json").write_text("{}")
    cfg = lambda m: load_config("toy", {"pretrain": None, "model": str(m), "data_dir": str(tmp_path)})  # noqa: E731
    key = pipeline.key_for(cfg(model), "baseline", {})
    shutil.copytree(model, tmp_path / "m2")
    assert pipeline.key_for(cfg(tmp_path / "m2"), "baseline", {}) == key
    (tmp_path / "m2" / "config.json").write_text('{"x": 1}')
    assert pipeline.key_for(cfg(tmp_path / "m2"), "baseline", {}) != key


def _copy_project(dst: Path) -> Path:
    ignore = shutil.ignore_patterns(".venv*", ".git", "data", "experiments", ".prefect", ".cache", "__pycache__",
                                    "*.egg-info", "bench", "docs")
    shutil.copytree(ROOT, dst, ignore=ignore)
    (dst / "data").mkdir()
    (dst / "data" / "toy").symlink_to(ROOT / "data" / "toy")  # the toy world is data, not code: share it
    (dst / ".venv-vllm").symlink_to(ROOT / ".venv-vllm")  # the engine env: the workers import the copy's code
    return dst


def _seva(project: Path, home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(SEVA_ROOT=str(project), PYTHONPATH=str(project), PREFECT_HOME=str(home), HF_HUB_OFFLINE="1")
    return subprocess.run([str(ROOT / ".venv" / "bin" / "seva"), *args], cwd=project, env=env, capture_output=True,
                          text=True, timeout=1800)


def _status(project: Path, home: Path, data: Path) -> dict[str, str]:
    out = _seva(project, home, "status", f"data_dir={data}", *OVERRIDES)
    return {line.split()[0]: line.split()[1] for line in out.stdout.splitlines() if line.split()[:1] and line.split()[0] in pipeline.STAGES}


def _published(data: Path) -> dict[str, int]:
    return {d.name: sum(1 for p in d.iterdir() if (p / "manifest.json").is_file())
            for d in (data / "artifacts").iterdir() if d.name in pipeline.STAGES}


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_editing_a_stage_makes_it_and_its_downstream_stale_and_only_those(tmp_path):
    from seva_tasks import toy

    toy.ensure(toy.ToyConfig())
    project, home, data = _copy_project(tmp_path / "project"), tmp_path / "prefect", tmp_path / "data"
    first = _seva(project, home, "run", f"data_dir={data}", *OVERRIDES)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert set(_status(project, home, data).values()) == {"fresh"}
    assert _published(data) == {s: 1 for s in pipeline.STAGES if s not in ("vicuna", "tower")}  # the toy preset has neither

    with open(project / "seva_tasks" / "stages" / "filter.py", "a") as f:
        f.write("\n# a contributor's edit\n")
    status = _status(project, home, data)
    assert status == {"pretrain": "fresh", "sample": "fresh", "augment": "fresh", "generate": "fresh",
                      "filter": "stale", "train": "stale", "baseline": "fresh", "evaluate": "stale"}, status
    quiet = _seva(project, home, "status", "-q", f"data_dir={data}", *OVERRIDES)
    assert quiet.returncode == 1 and quiet.stdout == ""

    second = _seva(project, home, "run", f"data_dir={data}", *OVERRIDES)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    rebuilt = {s for s, n in _published(data).items() if n == 2}
    assert rebuilt == {"filter", "train", "evaluate"}, _published(data)
    old, new = sorted((json.loads((p / "manifest.json").read_text()) for p in (data / "artifacts" / "filter").iterdir()
                       if (p / "manifest.json").is_file()), key=lambda m: m["timings"]["started"])
    assert old["code"] != new["code"] and (old["config"], old["upstream"]) == (new["config"], new["upstream"])
