"""`seva doctor`: what to run first on a new machine, before a long SeVa run.

    seva doctor paper-7b model=/models/llava-1.5-7b-hf sample.annotations=/data/llava/llava_v1_5_mix665k.json
    seva doctor --no-smoke --json                 # the toy preset; the checks only, as JSON

Each check is a `Check`: OK / WARN / FAIL, and on FAIL the fix (the config key or command to change).
Environment (torch, CUDA, the engine env's vLLM); the model the run loads (its files; it loads in
transformers and in the generate engine); the data (sample's 665k JSON and images, each benchmark's
files); the judge. Then, unless `--no-smoke` or something failed, a smoke run: the preset shrunk to 4
rows through the real stages (sample → augment → generate → filter → 2 DPO steps) and one benchmark
batch of the trained model, in a scratch store under $TMPDIR (never the user's data/artifacts).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from seva_tasks import benchmarks as B
from seva_tasks import pipeline
from seva_tasks.artifacts import MERGED
from seva_tasks.base import resolve
from seva_tasks.benchmarks import protocol
from seva_tasks.config import PipelineConfig, load_config, parse_overrides
from seva_tasks.engines import EngineConfig
from seva_tasks.errors import InputError, SevaError, StageError

SMOKE_ROWS = 4  # sampled rows -> 8 answers -> a few pairs -> 2 DPO steps
SMOKE_QUESTIONS = 8  # one benchmark batch
FIRST_ROWS = 5  # per subset and per benchmark: the rows whose image files must exist
PROBE = "import json, torch, vllm; print(json.dumps({'vllm': vllm.__version__, 'cuda': torch.cuda.device_count()}))"
POINT_MODEL = "point `model:` at a local llava-hf checkpoint, e.g. model=/models/llava-1.5-7b-hf"
COPY_FROM_RELEASE = "copy them from the llava-hf release (e.g. llava-hf/llava-1.5-7b-hf) into {dir}, or " + POINT_MODEL


@dataclass
class Check:
    """One line of the report; `detail` says what was found and, on FAIL, the fix."""

    status: str  # OK | WARN | FAIL
    name: str
    detail: str
    seconds: float | None = None


def _guard(name: str, fn: Callable[[], str], fix: str) -> Check:
    """OK with fn()'s detail, or FAIL with the error and the fix."""
    t0 = time.perf_counter()
    try:
        detail, status = fn(), "OK"
    except Exception as e:  # noqa: BLE001  (a doctor reports every failure, whatever raised it)
        detail, status = f"{e} Fix: {fix}", "FAIL"
    return Check(status, name, detail, round(time.perf_counter() - t0, 1))


# ---------------------------------------------------------------------------- environment

def _engine_env(python: Path, key: str, eng: EngineConfig) -> tuple[Check, int]:
    """The engine's interpreter exists and imports vllm (with a worker's environment); its CUDA devices."""
    from seva_tasks.engines import vllm_worker

    if not python.is_file():
        return Check("FAIL", "engine env", f"no interpreter at {python}. Fix: `make setup` (creates .venv-vllm), "
                     f"or set {key}.python to an interpreter that has vLLM."), 0
    try:
        proc = subprocess.run([str(python), "-c", PROBE], capture_output=True, text=True, timeout=300,
                              env=vllm_worker.worker_env(os.environ, eng), cwd=str(resolve(".")))
        error = " | ".join(proc.stderr.strip().splitlines()[-3:]) if proc.returncode else ""
    except subprocess.TimeoutExpired:
        error = "`import vllm` took over 300 s"
    if error:
        return Check("FAIL", "engine env", f"{python} cannot import vllm ({error}). Fix: `make setup` (or set {key}.python)."), 0
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    return Check("OK", "engine env", f"{python}: vllm {found['vllm']}, {found['cuda']} CUDA device(s)"), found["cuda"]


def check_environment(cfg: PipelineConfig) -> list[Check]:
    """torch and CUDA here, each vLLM engine's interpreter, and the GPUs the preset asks for."""
    import torch

    from seva_tasks.engines import pool

    engines = {"generate.engine": cfg.generate.engine, "evaluate.engine": cfg.evaluate.engine}
    cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    out = [Check("OK", "torch (pipeline)", f"torch {torch.__version__}, " +
                 (f"{cuda} CUDA device(s)" if cuda else "no CUDA: CPU only (train runs on CPU)"))]
    pythons = {pool.interpreter(e): (k, e) for k, e in reversed(engines.items()) if e.kind == "vllm"}  # one probe each
    for python, (key, eng) in pythons.items():
        check, devices = _engine_env(python, key, eng)
        out.append(check)
        cuda = max(cuda, devices)
    return out + [Check("WARN", "gpus", f"{key}.gpus={eng.gpus} but {cuda} CUDA device(s) are visible. Fix: check "
                        f"`nvidia-smi` and CUDA_VISIBLE_DEVICES, or set {key}.gpus=[] (one worker, inherited devices).")
                  for key, eng in engines.items() if len(eng.gpus) > cuda]


# ---------------------------------------------------------------------------- model

def model_dir(cfg: PipelineConfig) -> tuple[Path, str]:
    """The model generate, train and baseline load (pipeline.model_input), and where it comes from."""
    makers = [m for m in pipeline.MAKERS if getattr(cfg, m) is not None]
    if not makers:
        return pipeline.model_input(cfg, "generate", {}), "the preset's `model:`"
    last = makers[-1]
    rows = {r["stage"]: r for r in pipeline.status(cfg, last)}
    if rows[last]["state"] == "fresh":
        made = {m: {"path": str(pipeline.store_for(cfg).dir(m, rows[m]["key"]))} for m in makers}
        return pipeline.model_input(cfg, "generate", made), f"{last} artifact {rows[last]['key']}"
    return resolve(cfg.model), f"{last} not built yet: checking the base model it starts from (`model:`)"


def template_users(cfg: PipelineConfig) -> list[str]:
    """The config keys that make a stage render prompts with the model's own chat template."""
    sections = {"generate": cfg.generate, "train": cfg.train, "evaluate": cfg.evaluate}
    return [f"{k}.conv_template" for k, s in sections.items() if getattr(s, "conv_template", None) == "chat_template"]


def check_model_files(d: Path, users: list[str] = ()) -> list[Check]:
    """The directory, config.json, processor and tokenizer files, and a chat template (FAIL if one of `users`
    needs it; else WARN: LLaVA's own templates are rendered by seva_tasks.llava.prompts, not by the model)."""
    if not (d / "config.json").is_file():
        why = "has no config.json: not a transformers checkpoint" if d.is_dir() else "does not exist"
        return [Check("FAIL", "model dir", f"{d} {why}. Fix: {POINT_MODEL}.")]
    fix = COPY_FROM_RELEASE.format(dir=d)
    out = [Check("OK", "model dir", str(d))]
    for name, options in {"model processor": [["processor_config.json"], ["preprocessor_config.json"]],
                          "model tokenizer": [["tokenizer_config.json", "tokenizer.json"],
                                              ["tokenizer_config.json", "tokenizer.model"]]}.items():
        found = next((o for o in options if all((d / f).is_file() for f in o)), None)
        want = " or ".join(" + ".join(o) for o in options)
        out.append(Check("OK", name, ", ".join(found)) if found else Check("FAIL", name, f"{d} lacks {want}. Fix: {fix}."))
    template = any((d / f).is_file() for f in ("chat_template.json", "chat_template.jinja")) or any(
        "chat_template" in json.loads((d / f).read_text()) for f in ("tokenizer_config.json", "processor_config.json")
        if (d / f).is_file())
    why = f"{', '.join(users)}=chat_template needs it" if users else "fine for LLaVA's templates, not for conv_template=chat_template"
    out.append(Check("OK", "model chat template", "found") if template else Check("FAIL" if users else "WARN", "model chat template",
               f"{d} has no chat_template.json or .jinja (nor one in tokenizer_config.json): {why}. Fix: {fix}."))
    return out


def _load_in_transformers(d: Path, trust: bool) -> str:
    from transformers import AutoConfig, AutoProcessor

    loaded = [auto.from_pretrained(str(d), local_files_only=True, trust_remote_code=trust) for auto in (AutoConfig, AutoProcessor)]
    return ", ".join(type(x).__name__ for x in loaded)


def ask(engine: EngineConfig, model: Path, template: str, work: Path) -> str:
    """One question about a drawn image, answered through the worker pool exactly as generate asks."""
    import pyarrow.parquet as pq
    from PIL import Image

    from seva_tasks.engines import pool
    from seva_tasks.llava.prompts import prompt_builder

    work.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (64, 48), (200, 40, 40)).save(work / "probe.png")
    req = {"req_id": "doctor#0", "prompt": prompt_builder(template, model)("What colour is the image?"),
           "image": str(work / "probe.png"), "noise_step": None, "aug_seed": None}
    jobs = pool.write_shards([req], work, 1)
    pool.run_workers(engine, model, 4, jobs, embeds=False, work=work, desc="doctor: engine")
    row = pq.read_table(jobs[0]["results"]).to_pylist()[0]
    if row["error"]:
        raise StageError(f"The engine loaded but could not answer: {row['error']}.")
    return f"answered {row['text']!r} ({row['prompt_tokens']} prompt tokens)"


def check_model_loads(cfg: PipelineConfig, d: Path, scratch: Path) -> list[Check]:
    eng = cfg.generate.engine
    return [
        _guard("model loads: transformers", lambda: _load_in_transformers(d, cfg.train.trust_remote_code),
               "make it a llava-hf format directory (config.json, processor and tokenizer files); set "
               "train.trust_remote_code=true only if it ships its own code."),
        _guard(f"model loads: {eng.kind}", lambda: ask(eng, d, cfg.generate.conv_template, scratch / "probe"),
               "fix what the log names in generate.engine.* (dtype, max_model_len, kv_cache_memory_bytes on CPU, "
               "gpu_memory_utilization or tensor_parallel_size on GPUs) or in the model directory."),
    ]


# ---------------------------------------------------------------------------- data

def _subset_images(cfg, raws: list, root: Path) -> list[Check]:
    """Each configured subset has records, its first ones are LLaVA conversations, and their images exist."""
    import msgspec

    from seva_tasks.stages import sample  # its own split and record validation, not a copy

    out, dec = [], msgspec.json.Decoder(sample._Record)
    for subset, idx in sample._split(raws, cfg, Counter(), Counter()).items():
        checked = [sample._validate(raws[i], dec, cfg.subsets[subset].strip) for i in idx[:FIRST_ROWS]]
        rows, why = [c for c, _ in checked if c], [w for _, w in checked if w]
        missing = [root / image for _, image, _ in rows if not (root / image).is_file()]
        if not idx:
            out.append(Check("FAIL", f"665k {subset}", f"no record has an image under {subset}/. Fix: drop {subset} "
                             "from sample.subsets, or point sample.annotations at the LLaVA-665k mix that has it."))
        elif not rows:
            out.append(Check("FAIL", f"665k {subset}", f"none of the first {len(checked)} {subset} records is a LLaVA "
                             f"conversation ({', '.join(why)}). Fix: point sample.annotations at llava_v1_5_mix665k.json."))
        elif missing:
            out.append(Check("FAIL", f"665k {subset}", f"{missing[0]} not found ({len(missing)} of the first {len(rows)} "
                             f"{subset} images missing from {missing[0].parent}). Fix: set sample.image_root to the "
                             f"folder that holds {subset}/ (now {root}), or put the images there."))
        else:
            out.append(Check("OK", f"665k {subset}", f"{len(idx):,} records; the first {len(rows)} are conversations "
                             f"with their images under {root}"))
    return out


def check_annotations(cfg) -> list[Check]:
    """sample's LLaVA-665k JSON parses as a list of conversations, and the images it names exist."""
    from seva_tasks.stages import sample

    path, root = resolve(cfg.annotations), resolve(cfg.image_root)
    if not path.is_file():
        return [Check("FAIL", "665k json", f"{path} does not exist. Fix: set sample.annotations="
                      "/path/to/llava_v1_5_mix665k.json (LLaVA-1.5's instruction mix).")]
    if not root.is_dir():
        return [Check("FAIL", "665k images", f"{root} is not a directory. Fix: set sample.image_root to the folder "
                      "the JSON's `image` paths are relative to (it holds ocr_vqa/, textvqa/, ...).")]
    try:
        raws = sample._read(path)  # the stage's reader: its errors, and its speed on the 1 GB file
    except InputError as e:
        return [Check("FAIL", "665k json", str(e))]
    return [Check("OK", "665k json", f"{path}: {len(raws):,} records"), *_subset_images(cfg, raws, root.resolve())]


def check_benchmark(cfg, name: str) -> Check:
    """The benchmark's folder has the files its module reads: questions, their first images, the labels."""
    d = protocol.data_dir(cfg, name)

    def files() -> str:
        qs = B.load_questions(name, d)  # the module's own reader names the file it expected
        if missing := [q.image for q in qs[:FIRST_ROWS] if isinstance(q.image, Path) and not q.image.is_file()]:
            raise InputError(f"{missing[0]} not found (the image of one of the first questions).")
        if not B.needs_judge(name):  # scoring no answers still reads every label file the scorer needs
            B.score_answers(name, d, [])
        return f"{len(qs):,} questions in {d}"
    return _guard(f"benchmark {name}", files, f"set evaluate.data_root (the folder holding {B.get(name).DIR}/ and the "
                  f"others) or evaluate.dirs.{name}, or drop {name} from evaluate.benchmarks.")


def check_judge(cfg) -> list[Check]:
    """The configured judge answers; with none, which benchmarks go unscored."""
    from seva_tasks.benchmarks.judge import Judge

    judged = [n for n in cfg.benchmarks if B.needs_judge(n)]
    if cfg.judge_mode == "off":
        what = f"{', '.join(judged)} will be skipped, MMBench gets no fallback extractor" if judged else "no judged benchmark"
        return [Check("WARN" if judged else "OK", "judge", f"evaluate.judge_mode=off: {what}. To judge: serve a model "
                      "with vLLM and set evaluate.judge_mode=server evaluate.judge.base_url=http://HOST:8000/v1.")]
    if cfg.judge_mode == "local":
        model = resolve(cfg.judge_model) if cfg.judge_model else None
        return [Check("OK", "judge", f"local: the run serves {model or 'the base model'} with vLLM on 127.0.0.1")
                if model is None or (model / "config.json").is_file() else
                Check("FAIL", "judge", f"evaluate.judge_model={model} has no config.json. Fix: point it at a local "
                      "model directory, or unset it (the base model then judges).")]

    def answer() -> str:
        judge = Judge(cfg.judge.model_copy(update={"timeout_s": 15.0, "retries": 0}))
        try:
            reply = judge.chat([{"role": "user", "content": "Reply with OK."}], temperature=0.0, max_tokens=4)
        finally:
            judge.close()
        return f"{cfg.judge.base_url} ({cfg.judge.model}) answered {reply!r}"
    return [_guard("judge", answer, "start the judge (`python -m vllm.entrypoints.openai.api_server --model "
                   f"/models/judge --served-model-name {cfg.judge.model}`) or fix evaluate.judge.base_url / .model.")]


# ---------------------------------------------------------------------------- smoke

def smoke_overrides(cfg: PipelineConfig, model: Path, scratch: Path) -> dict[str, Any]:
    """The preset shrunk to seconds of work per stage, from `model`, in a scratch store."""
    names = list(cfg.sample.subsets)[:SMOKE_ROWS]
    rows = {n: SMOKE_ROWS // len(names) + (i < SMOKE_ROWS % len(names)) for i, n in enumerate(names)}
    return {
        "data_dir": str(scratch / "data"), "toy": None, "pretrain": None, "model": str(model),
        "sample.subsets": {n: {**cfg.sample.subsets[n].model_dump(mode="json"), "images": k, "questions_per_image": 1}
                           for n, k in rows.items()},
        "augment.noise_step": 999,  # near-pure noise and SeVa's exact-equal filter: clean and noised answers
        "filter.mode": "seva",      # differ, so 4 rows leave pairs to train on (the smoke tests the path, not the pairs)
        "generate.max_new_tokens": 16, "train.max_steps": 2, "train.per_device_train_batch_size": 2,
        "train.gradient_accumulation_steps": 1, "evaluate.judge_mode": "off", "evaluate.max_new_tokens": 16,
        "evaluate.benchmarks": protocol.benchmarks(cfg.evaluate.model_copy(update={"judge_mode": "off"}))[:1],
    }


def _smoke_detail(name: str, stats: dict) -> str:  # from the stage's manifest
    c = stats["counts"]
    if name == "generate":
        return f"{c['requests']} answers, {stats['totals']['gen_tokens_per_s']} tokens/s"
    if name == "filter":
        return f"{c['kept']} of {c['pairs_in']} pairs kept"
    if name == "train":
        return f"{c['steps']} DPO steps, {stats['seconds'] / max(c['steps'], 1):.1f} s/step (load and merge included)"
    return f"{c['rows']} rows"


def smoke(preset: str, overrides: dict, cfg: PipelineConfig, model: Path, scratch: Path, say) -> list[Check]:
    """4 rows through each stage's `run` (via the scratch store, which writes the manifests later stages read),
    then one benchmark batch of the trained model through the evaluation protocol."""
    scfg = load_config(preset, {**overrides, **smoke_overrides(cfg, model, scratch)})
    store, refs, out = pipeline.store_for(scfg), {}, []

    def stage(name: str) -> str:
        refs[name] = pipeline.run_stage(scfg, name, refs)
        return _smoke_detail(name, store.manifest(name, refs[name]["key"])["stats"])

    def batch(bench: str) -> str:
        merged = Path(refs["train"]["path"]) / MERGED
        res = protocol.evaluate_model(scfg.evaluate, merged, scratch / "benchmark", label="aligned", judge_base=merged,
                                      limit=SMOKE_QUESTIONS)[bench]["answers"]
        return f"{res['answered']} of {res['questions']} questions answered and scored by the trained model"
    steps = [(n, stage, f"`seva run --until {n}` fails the same way: fix what the error names (the {n} config "
              "section or the files it reads).") for n in ("sample", "augment", "generate", "filter", "train")]
    steps += [(b, batch, "fix what the error names in evaluate.engine.* (the model is train's merged/).")
              for b in scfg.evaluate.benchmarks]  # one, or none if every configured benchmark needs a judge
    for name, step, fix in steps:
        say(f"smoke: {name} ...")
        out.append(_guard(f"smoke {name}", lambda: step(name), fix))
        say(f"smoke: {name} {out[-1].status} in {out[-1].seconds} s")
        if out[-1].status == "FAIL":
            break
    return out


# ---------------------------------------------------------------------------- all of it

@contextlib.contextmanager
def _stdout_to_stderr():
    """Only the report goes to stdout: the Trainer prints its logs there, and accelerate's children inherit fd 1."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _model_checks(cfg: PipelineConfig, scratch: Path, say) -> tuple[Path | None, list[Check]]:
    try:
        model, source = model_dir(cfg)
    except SevaError as e:  # no `model:` at all
        return None, [Check("FAIL", "model dir", str(e))]
    checks = [Check("OK", "model source", source), *check_model_files(model, template_users(cfg))]
    if all(c.status != "FAIL" for c in checks):  # loading a dir with missing files only repeats the failure, slowly
        say(f"doctor: loading {model} in transformers and in the {cfg.generate.engine.kind} engine ...")
        checks += check_model_loads(cfg, model, scratch)
    return model, checks


def run(preset: str = "toy", overrides: list[str] | dict | None = None, *, with_smoke: bool = True,
        say: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True)) -> list[Check]:
    """Every check for a preset + overrides, then (if nothing failed and `with_smoke`) the smoke run."""
    overrides = parse_overrides(overrides)
    cfg = load_config(preset, overrides)
    scratch = Path(tempfile.mkdtemp(prefix="seva-doctor-"))
    with _stdout_to_stderr():
        try:
            pipeline.prepare(cfg)  # the toy world, as `seva run` builds it first (instant once built)
            say("doctor: environment (torch, the engine env's vllm) ...")
            checks = check_environment(cfg)
            model, found = _model_checks(cfg, scratch, say)
            say("doctor: data and judge ...")
            benchmarks = [check_benchmark(cfg.evaluate, n) for n in protocol.benchmarks(cfg.evaluate)]  # those it asks
            checks += found + check_annotations(cfg.sample) + benchmarks + check_judge(cfg.evaluate)
            if with_smoke and all(c.status != "FAIL" for c in checks):
                checks += smoke(preset, overrides, cfg, model, scratch, say)
            elif with_smoke:
                checks.append(Check("WARN", "smoke", "not run: fix the failures above first."))
            return checks
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


def report(checks: list[Check]) -> str:
    """One line per check, then the verdict."""
    lines = [f"{c.status:<5} {c.name:<26} " + c.detail.replace("\n", "\n" + " " * 33) +
             (f" ({c.seconds} s)" if c.seconds else "") for c in checks]
    n = Counter(c.status for c in checks)
    verdict = "Fix each FAIL as it says and rerun `seva doctor`." if n["FAIL"] else "Ready for `seva run`."
    return "\n".join([*lines, f"{n['OK']} OK, {n['WARN']} WARN, {n['FAIL']} FAIL. {verdict}"])


def as_json(checks: list[Check]) -> str:
    return json.dumps({"ok": all(c.status != "FAIL" for c in checks), "checks": [asdict(c) for c in checks]}, indent=1)
