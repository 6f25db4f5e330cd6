"""Reliability: bad inputs, concurrent flows, and security properties, end to end where it matters.

Complements tests/test_store.py (crash, kill -9, concurrent builds, disk full and permission denied
at the store level), tests/test_sample.py (drop reasons on `sample.run`) and tests/test_generate.py
(kill -9 of the generation worker and of the flow, resume). Here:
- bad inputs through `pipeline.run_stage` with a temporary data dir: a clear InputError and nothing
  published (no `<stage>/<key>/`, no leftover partial dir), or rows counted in the published manifest
  and every odd image mode still augmentable downstream;
- two `seva` flows on one config at once, each on its own ephemeral Prefect server: every stage
  computed once, the other flow waits and reuses it, artifacts intact;
- security: no pickle anywhere a toy run writes, Prefect task results are JSON, every listening
  socket of a toy run is on loopback, `trust_remote_code` off by default, servers started on
  127.0.0.1, image paths confined to their root.
"""

from __future__ import annotations

import json
import os
import pkgutil
import re
import shutil
import struct
import subprocess
import sys
import textwrap
import threading
import time
import zipfile
import zlib
from pathlib import Path

import pytest
from PIL import Image

from seva_tasks import pipeline, serve, toy
from seva_tasks.stages.augment import AugmentConfig
from seva_tasks.config import ROOT, PipelineConfig, load_config
from seva_tasks.errors import InputError, SevaError, StageError
from seva_tasks.stages.sample import OCR_SUFFIX, SampleConfig
from seva_tasks.store import MANIFEST, digest_dir

OCR_Q = "<image>\nWho wrote this book?\n" + OCR_SUFFIX


# ------------------------------------------------------------------------------------ helpers

def _rec(rid, image, *questions):
    conv = [t for q in questions for t in ({"from": "human", "value": q}, {"from": "gpt", "value": "a"})]
    return {"id": rid, "image": image, "conversations": conv}


def _img(root: Path, rel: str, mode: str = "RGB", size=(40, 30), fmt: str | None = None) -> str:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    color = {"RGB": (200, 30, 30), "CMYK": (0, 255, 255, 0), "L": 128, "LA": (90, 200), "RGBA": (10, 200, 10, 128),
             "P": 3, "1": 1, "I;16": 40000, "I": 70000, "F": 0.5}[mode]
    Image.new(mode, size, color).save(p, format=fmt)
    return rel


def _bomb(path: Path, side: int = 40_000) -> None:
    """A tiny PNG whose header claims side×side pixels."""
    Image.new("L", (1, 1)).save(path)
    buf = bytearray(path.read_bytes())
    buf[16:24] = struct.pack(">II", side, side)
    buf[29:33] = struct.pack(">I", zlib.crc32(bytes(buf[12:29])))
    path.write_bytes(bytes(buf))


def _cfg(tmp: Path, ann: Path, root: Path, **sample) -> PipelineConfig:
    sample.setdefault("subsets", {"ocr_vqa": {"images": 1000}, "textvqa": {"images": 1000}})
    return PipelineConfig(data_dir=tmp / "data", sample=SampleConfig(annotations=ann, image_root=root, **sample),
                          augment=AugmentConfig(mode="pixel", image_size=32))


def _published(cfg: PipelineConfig, stage: str) -> list[str]:
    """The stage's artifact dirs: everything but lock files and a failed attempt's `.<key>.partial/`.

    A partial dir left by a failed attempt is never visible as `<key>/` and the next build of that
    key wipes it (non-resumable stages) or continues it (resumable ones); it must hold no manifest.
    """
    d = cfg.artifacts / stage
    if not d.is_dir():
        return []
    for partial in d.glob(".*.partial"):
        assert not (partial / MANIFEST).exists(), partial
    return sorted(p.name for p in d.iterdir() if not p.name.endswith((".lock", ".partial")))


def _assert_intact(cfg: PipelineConfig, stage: str, ref: dict) -> dict:
    """The published dir's bytes match its manifest's digest; nothing partial or stale beside it."""
    manifest = json.loads((Path(ref["path"]) / MANIFEST).read_text())
    assert digest_dir(Path(ref["path"]))[0] == manifest["digest"] == ref["digest"]
    assert _published(cfg, stage) == [ref["key"]], _published(cfg, stage)
    return manifest


@pytest.fixture
def root(tmp_path) -> Path:
    r = tmp_path / "images"
    r.mkdir()
    return r


# ---------------------------------------------------------------- bad input files: clear error, nothing published

def _write(tmp: Path, content) -> Path:
    p = tmp / "mix.json"
    p.write_bytes(content if isinstance(content, bytes) else json.dumps(content).encode())
    return p


UNUSABLE_FILES = {
    "truncated JSON": (b'[{"id": "a", "image": "ocr_vqa/images/a.jpg", "conversations": [{"from": "hu', "not valid JSON"),
    "empty file": (b"", "not valid JSON"),
    "binary garbage": (bytes(range(256)) * 4, "not valid JSON"),
    "top level is an object": ({"id": "a", "image": "ocr_vqa/images/a.jpg"}, "top level must be a JSON array"),
    "top level is a string": ("llava", "top level must be a JSON array"),
    "top level is a number": (665000, "top level must be a JSON array"),
    "array of non-objects": ([1, "two", None, [3]], "no usable rows"),
    "only text-only rows": ([{"id": "t", "conversations": [{"from": "human", "value": "hi"}]}], "no usable rows"),
    "only other subsets": ([_rec("c", "coco/train2017/c.jpg", "<image>\nWhat?")], "no usable rows"),
    "every image missing": ([_rec(f"m{i}", f"ocr_vqa/images/m{i}.jpg", OCR_Q) for i in range(3)], "no usable rows.*image_missing"),
    "empty array": ([], "no usable rows"),
}


@pytest.mark.parametrize("case", list(UNUSABLE_FILES))
def test_unusable_annotations_raise_input_error_and_publish_nothing(tmp_path, root, case):
    content, why = UNUSABLE_FILES[case]
    cfg = _cfg(tmp_path, _write(tmp_path, content), root)
    with pytest.raises(InputError, match=why) as e:
        pipeline.run_stage(cfg, "sample", {})
    assert "mix.json" in str(e.value) and "rerun" in str(e.value)
    assert _published(cfg, "sample") == []  # no <key>/
    assert [r["state"] for r in pipeline.status(cfg, "sample")] == ["missing"]


@pytest.mark.parametrize("case", ["missing file", "a directory", "image_root missing", "image_root is a file"])
def test_unreadable_inputs_raise_input_error_and_publish_nothing(tmp_path, root, case):
    ann = _write(tmp_path, [_rec("a", _img(root, "ocr_vqa/images/a.jpg"), OCR_Q)])
    if case == "missing file":
        ann = tmp_path / "absent.json"
    elif case == "a directory":
        ann = tmp_path / "dir.json"
        ann.mkdir()
    elif case == "image_root missing":
        root = tmp_path / "no-such-root"
    else:
        root = ann
    cfg = _cfg(tmp_path, ann, root)
    with pytest.raises(InputError, match="rerun"):
        pipeline.run_stage(cfg, "sample", {})
    assert _published(cfg, "sample") == []


BAD_UTF8_IMAGE = b'{"id": "u1", "image": "ocr_vqa/images/\xff.jpg", "conversations": []}'
BAD_UTF8_QUESTION = b'{"id": "u2", "image": "ocr_vqa/images/a.jpg", "conversations": [{"from": "human", "value": "q\xff"}]}'


@pytest.mark.parametrize("content, outcome", [
    (b"[" + b"[" * 5000 + b"]" * 5000 + b"]", "nested too deeply"),
    (b"[" + BAD_UTF8_IMAGE + b"]", {"invalid_utf8": 1}),
    (b"[" + BAD_UTF8_QUESTION + b"]", {"invalid_utf8": 1}),
], ids=["nested 5000 deep", "invalid UTF-8 in image", "invalid UTF-8 in question"])
def test_malformed_bytes_are_a_clear_error_or_a_counted_drop(tmp_path, root, content, outcome):
    """A file msgspec cannot decode is an InputError naming it; a record with invalid UTF-8 is a counted drop."""
    cfg = _cfg(tmp_path, _write(tmp_path, content), root)
    with pytest.raises(InputError, match=outcome if isinstance(outcome, str) else "no usable rows") as e:
        pipeline.run_stage(cfg, "sample", {})
    assert "mix.json" in str(e.value) and "rerun" in str(e.value)
    if isinstance(outcome, dict):
        assert f"drops: {outcome}" in str(e.value)
    assert _published(cfg, "sample") == []
    if isinstance(outcome, dict):  # the rest of the file is still read: one good row beside the bad one
        _img(root, "ocr_vqa/images/ok.jpg")
        good = json.dumps(_rec("ok", "ocr_vqa/images/ok.jpg", OCR_Q)).encode()
        cfg = _cfg(tmp_path, _write(tmp_path, content[:-1] + b", " + good + b"]"), root)
        manifest = _assert_intact(cfg, "sample", pipeline.run_stage(cfg, "sample", {}))
        assert manifest["stats"]["drops"] == outcome and manifest["stats"]["counts"]["rows"] == 1


# ---------------------------------------------------------------- bad rows: counted, published intact, augmentable

def _corpus(tmp: Path, root: Path) -> tuple[list[dict], list[str]]:
    """Rows covering every drop reason and every odd image; returns (records, ids expected to be kept)."""
    kept = [
        _rec("rgb", _img(root, "ocr_vqa/images/rgb.jpg"), OCR_Q),
        _rec("cmyk", _img(root, "ocr_vqa/images/cmyk.jpg", "CMYK"), OCR_Q),
        _rec("gray", _img(root, "ocr_vqa/images/gray.jpg", "L"), OCR_Q),
        _rec("la", _img(root, "ocr_vqa/images/la.png", "LA"), OCR_Q),
        _rec("rgba", _img(root, "ocr_vqa/images/rgba.png", "RGBA"), OCR_Q),
        _rec("palette", _img(root, "ocr_vqa/images/p.png", "P"), OCR_Q),
        _rec("bilevel", _img(root, "ocr_vqa/images/bw.png", "1"), OCR_Q),
        _rec("i16", _img(root, "textvqa/train_images/i16.png", "I;16"), "<image>\nWhat is written?"),
        _rec("i32", _img(root, "textvqa/train_images/i32.tif", "I"), "<image>\nWhat is written?"),
        _rec("float", _img(root, "textvqa/train_images/f.tif", "F"), "<image>\nWhat is written?"),
        _rec("huge", _img(root, "textvqa/train_images/huge.jpg", size=(6000, 4000)), "<image>\nWhat is written?"),
        _rec("webp", _img(root, "textvqa/train_images/w.webp", fmt="WEBP"), "<image>\nWhat is written?"),
        _rec("inlink", "ocr_vqa/images/inlink.jpg", OCR_Q),
    ]
    os.symlink(root / "ocr_vqa/images/rgb.jpg", root / "ocr_vqa/images/inlink.jpg")
    outside = tmp / "outside"
    _img(outside, "secret.jpg")
    os.symlink(outside / "secret.jpg", root / "ocr_vqa/images/escape.jpg")
    os.symlink(outside, root / "ocr_vqa/escaped_dir")  # a directory link leading out of the root
    os.symlink(root / "ocr_vqa/images/loop_b.jpg", root / "ocr_vqa/images/loop_a.jpg")
    os.symlink(root / "ocr_vqa/images/loop_a.jpg", root / "ocr_vqa/images/loop_b.jpg")
    (root / "ocr_vqa/images/zero.jpg").write_bytes(b"")
    full = (root / "ocr_vqa/images/rgb.jpg").read_bytes()
    (root / "ocr_vqa/images/trunc.jpg").write_bytes(full[: len(full) // 2])
    (root / "ocr_vqa/images/text.jpg").write_text("not an image")
    _bomb(root / "ocr_vqa/images/bomb.png")
    bad = [
        "a string", None,
        {"id": "wi", "image": ["ocr_vqa/images/rgb.jpg"], "conversations": []},
        {"id": "nc", "image": "ocr_vqa/images/rgb.jpg"},
        {"image": "ocr_vqa/images/rgb.jpg", "conversations": [{"from": "human", "value": "q"}]},
        {"id": {"x": 1}, "image": "ocr_vqa/images/rgb.jpg", "conversations": [{"from": "human", "value": "q"}]},
        {"id": "cs", "image": "ocr_vqa/images/rgb.jpg", "conversations": "human: q"},
        {"id": "nv", "image": "ocr_vqa/images/rgb.jpg", "conversations": [{"from": "human"}]},
        {"id": "nh", "image": "ocr_vqa/images/rgb.jpg", "conversations": [{"from": "gpt", "value": "a"}]},
        _rec("eq", "ocr_vqa/images/rgb.jpg", "<image>\n" + OCR_SUFFIX),
        _rec("abs", str(root / "ocr_vqa/images/rgb.jpg"), OCR_Q),
        _rec("dotdot", "ocr_vqa/../../outside/secret.jpg", OCR_Q),
        _rec("nul", "ocr_vqa/images/rgb.jpg\x00.png", OCR_Q),
        _rec("rgb", "ocr_vqa/images/rgb.jpg", OCR_Q),  # duplicate id
        _rec("miss", "ocr_vqa/images/missing.jpg", OCR_Q),
        _rec("loop", "ocr_vqa/images/loop_a.jpg", OCR_Q),
        _rec("zero", "ocr_vqa/images/zero.jpg", OCR_Q),
        _rec("trunc", "ocr_vqa/images/trunc.jpg", OCR_Q),
        _rec("text", "ocr_vqa/images/text.jpg", OCR_Q),
        _rec("bomb", "ocr_vqa/images/bomb.png", OCR_Q),
        _rec("escape", "ocr_vqa/images/escape.jpg", OCR_Q),
        _rec("escdir", "ocr_vqa/escaped_dir/secret.jpg", OCR_Q),
    ]
    return kept + bad, [r["id"] for r in kept]


def test_bad_rows_are_counted_and_the_published_artifact_is_intact_and_augmentable(tmp_path, root):
    records, kept = _corpus(tmp_path, root)
    bad_bytes = [BAD_UTF8_IMAGE, BAD_UTF8_QUESTION]  # not expressible as Python objects: spliced in as bytes
    cfg = _cfg(tmp_path, _write(tmp_path, json.dumps(records).encode()[:-1] + b", " + b", ".join(bad_bytes) + b"]"), root)
    ref = pipeline.run_stage(cfg, "sample", {})
    manifest = _assert_intact(cfg, "sample", ref)
    drops = manifest["stats"]["drops"]
    assert drops == {
        "wrong_type:record": 2,
        "wrong_type:image": 1,
        "missing_field:conversations": 1,
        "missing_field:id": 1,
        "wrong_type:id": 1,
        "wrong_type:conversations": 1,
        "missing_field:conversations[].value": 1,
        "no_human_turn": 1,
        "empty_question": 1,
        "unsafe_image_path": 3,  # absolute, `..`, NUL
        "duplicate_id": 1,
        "image_missing": 2,  # missing, symlink loop
        "image_undecodable": 3,  # zero-byte, truncated, text
        "image_too_large": 1,  # decompression bomb header
        "image_outside_root": 2,  # file link and directory link leading out
        "invalid_utf8": 2,  # in the image path, in a question
    }, drops
    assert manifest["stats"]["counts"]["records"] == len(records) + len(bad_bytes)

    import polars as pl

    df = pl.read_parquet(Path(ref["path"]) / "unlabeled.parquet")
    assert sorted(df["record_id"]) == sorted(kept)
    aug = pipeline.run_stage(cfg, "augment", {"sample": ref})
    aug_manifest = _assert_intact(cfg, "augment", aug)
    assert aug_manifest["stats"]["drops"] == {}  # every mode sample kept, augment can read
    out = pl.read_parquet(Path(aug["path"]) / "augmented.parquet")
    assert out.height == df.height
    for rel in out["aug_image"]:
        with Image.open(Path(aug["path"]) / rel) as im:
            assert (im.mode, im.size) == ("RGB", (32, 32))


def test_image_root_confinement_holds_for_every_escape_route(tmp_path, root):
    """No row whose image resolves outside image_root is ever published (absolute, .., NUL, links)."""
    records, _ = _corpus(tmp_path, root)
    cfg = _cfg(tmp_path, _write(tmp_path, records), root)
    ref = pipeline.run_stage(cfg, "sample", {})
    import polars as pl

    real_root = root.resolve()
    for rel in pl.read_parquet(Path(ref["path"]) / "unlabeled.parquet")["image"]:
        assert (real_root / rel).resolve().is_relative_to(real_root), rel


# ------------------------------------------------------------------------------ flows in subprocesses

FLOW_CHILD = textwrap.dedent(
    """
    import json, os, sys, time
    from pathlib import Path

    spec = json.loads(sys.argv[1])
    if spec.get("barrier"):
        # All parties meet before each stage (so they really build it at the same time), and every
        # real computation is logged: the store's lock must let exactly one of them compute.
        from seva_tasks import pipeline
        real_run_stage, bar = pipeline.run_stage, Path(spec["barrier"])

        def run_stage(cfg, name, upstream, **kw):
            (bar / f"{name}.{os.getpid()}").touch()
            deadline = time.time() + 900
            while len(list(bar.glob(f"{name}.*"))) < spec["parties"]:
                if time.time() > deadline:
                    raise SystemExit(f"barrier timeout at {name}")
                time.sleep(0.05)
            mod = pipeline.STAGES[name].module
            real = mod.run

            def counted(*a, **k):
                with open(bar / "computes", "a") as f:
                    f.write(f"{name} {os.getpid()}\\n")
                return real(*a, **k)

            mod.run = counted
            try:
                return real_run_stage(cfg, name, upstream, **kw)
            finally:
                mod.run = real

        pipeline.run_stage = run_stage
    from flows.seva import seva

    refs = seva(config="toy", overrides=spec["overrides"], until=spec["until"])
    print("REFS " + json.dumps(refs))
    """
)


# The flow mechanics tests stop at augment, which does not need the toy model: skip its pretraining.
NO_PRETRAIN = {"pretrain": None}


def _scratch_root(tmp: Path) -> Path:
    """A project root of its own (artifacts, Prefect results, Prefect home) over this checkout's inputs."""
    toy.ensure(toy.ToyConfig())
    scratch = tmp / "root"
    (scratch / "data").mkdir(parents=True)
    for rel in ("configs", ".venv", ".venv-vllm"):
        if (ROOT / rel).exists():
            os.symlink(ROOT / rel, scratch / rel)
    shutil.copytree(ROOT / "data/toy", scratch / "data/toy", symlinks=True)
    return scratch


def _flow(scratch: Path, home: str, spec: dict) -> subprocess.Popen:
    """Start `seva(...)` in a child on an ephemeral Prefect server with its own PREFECT_HOME."""
    (scratch / home).mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(SEVA_ROOT=str(scratch), PREFECT_HOME=str(scratch / home), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="300", PREFECT_LOGGING_LEVEL="WARNING",
               HF_HUB_OFFLINE="1", TQDM_DISABLE="1")
    return subprocess.Popen([sys.executable, "-c", FLOW_CHILD, json.dumps(spec)], cwd=scratch, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _refs(proc: subprocess.Popen, timeout: float) -> dict:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-4000:]
    return json.loads(next(line for line in out.splitlines() if line.startswith("REFS "))[5:])


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_two_flows_on_one_config_compute_each_stage_once(tmp_path):
    scratch = _scratch_root(tmp_path)
    bar = tmp_path / "barrier"
    bar.mkdir()
    data = tmp_path / "data"
    over = {"data_dir": str(data), "augment.mode": "pixel", **NO_PRETRAIN}
    spec = {"overrides": over, "until": "augment", "barrier": str(bar), "parties": 2}
    procs = [_flow(scratch, f".prefect-{i}", spec) for i in range(2)]
    refs = [_refs(p, 1500) for p in procs]
    assert refs[0] == refs[1]
    computes = (bar / "computes").read_text().split()
    stages = list(refs[0])
    assert computes[::2] == stages, computes  # each stage computed once, by one of the two
    cfg = load_config("toy", over)
    for stage, ref in refs[0].items():
        _assert_intact(cfg, stage, ref)  # no partial, no `.old-` leftovers, bytes match the digest


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_artifact_deleted_behind_prefects_back_is_rebuilt_alone(tmp_path):
    """Prefect still holds a cache record for the stage, but its dir is gone: that stage (only) recomputes."""
    scratch = _scratch_root(tmp_path)
    bar, data = tmp_path / "barrier", tmp_path / "data"
    spec = {"overrides": {"data_dir": str(data), **NO_PRETRAIN}, "until": "augment", "barrier": str(bar), "parties": 1}

    def run() -> tuple[dict, list[str]]:
        shutil.rmtree(bar, ignore_errors=True)
        bar.mkdir()
        refs = _refs(_flow(scratch, ".prefect", spec), 1500)
        log = bar / "computes"
        return refs, log.read_text().split()[::2] if log.exists() else []

    first, computed = run()
    assert computed == ["sample", "augment"]
    shutil.rmtree(first["augment"]["path"])
    again, computed = run()
    assert computed == ["augment"] and again == first
    shutil.rmtree(first["sample"]["path"])
    again, computed = run()  # same bytes again: augment's key is unchanged, so it stays cached
    assert computed == ["sample"] and again == first
    cfg = load_config("toy", {"data_dir": str(data), **NO_PRETRAIN})
    for stage, ref in again.items():
        _assert_intact(cfg, stage, ref)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_flow_refs_point_into_their_own_data_dir(tmp_path):
    scratch = _scratch_root(tmp_path)
    a, b = tmp_path / "A", tmp_path / "B"
    for d in (a, b, a):
        refs = _refs(_flow(scratch, ".prefect", {"overrides": {"data_dir": str(d), **NO_PRETRAIN}, "until": "augment"}), 1500)
    assert all(Path(r["path"]).is_relative_to(a) for r in refs.values()), refs


# ------------------------------------------------------------------------------ a full toy run, scanned

def _listeners(pid: int) -> set[tuple[str, int, str]]:
    """TCP listening sockets of a process and its descendants: (address, port, process name)."""
    import psutil

    found = set()
    try:
        top = psutil.Process(pid)
        procs = [top, *top.children(recursive=True)]
    except psutil.NoSuchProcess:
        return found
    for p in procs:
        try:
            for c in p.net_connections(kind="tcp"):
                if c.status == psutil.CONN_LISTEN:
                    found.add((c.laddr.ip, c.laddr.port, p.name()))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory, small_run) -> dict:
    """The whole toy flow once (small: what it writes is the same kinds of files), in a scratch root; every listening socket it opened, sampled every 0.2 s."""
    tmp = tmp_path_factory.mktemp("toy-run")
    scratch = _scratch_root(tmp)
    data = tmp / "data"
    proc = _flow(scratch, ".prefect", {"overrides": {**small_run, "data_dir": str(data)}, "until": None})
    sockets: set = set()
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            sockets.update(_listeners(proc.pid))
            time.sleep(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        refs = _refs(proc, 3300)
    finally:
        done.set()
        watcher.join()
    return {"scratch": scratch, "data": data, "refs": refs, "sockets": sockets}


PICKLE_SUFFIXES = {".pkl", ".pickle", ".pt", ".pth", ".bin", ".ckpt", ".joblib"}


def _pickled(path: Path) -> str | None:
    """Why `path` is (or holds) a pickle, else None."""
    if path.suffix in PICKLE_SUFFIXES:
        return f"suffix {path.suffix}"
    with open(path, "rb") as f:
        head = f.read(4)
    if path.suffix != ".safetensors" and len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return f"pickle protocol {head[1]} header"
    if head == b"PK\x03\x04":  # torch.save's zip format keeps its pickle as data.pkl
        with zipfile.ZipFile(path) as z:
            if any(n.endswith(".pkl") for n in z.namelist()):
                return "zip with a .pkl member"
    return None


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_no_pickle_anywhere_a_toy_run_writes(toy_run):
    stages = set(toy_run["refs"])
    assert {"sample", "augment", "generate", "filter", "train", "evaluate"} <= stages, stages
    roots = [toy_run["data"], toy_run["scratch"] / "data"]  # artifacts; Prefect results and the toy world
    scanned, bad = 0, []
    for root in roots:
        for p in root.rglob("*"):
            if p.is_file() and not p.is_symlink():
                scanned += 1
                if why := _pickled(p):
                    bad.append(f"{p}: {why}")
    assert scanned > 50 and not bad, bad


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_prefect_task_results_are_json(toy_run):
    results = toy_run["scratch"] / "data/prefect-results"
    files = [p for p in results.rglob("*") if p.is_file()]
    assert len(files) >= len(toy_run["refs"])
    for p in files:
        record = json.loads(p.read_bytes())  # Prefect's result record; its serializer must be JSON
        assert record.get("metadata", {}).get("serializer", {}).get("type") == "json", (p, record.get("metadata"))


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_every_listening_socket_of_a_toy_run_is_loopback(toy_run):
    seen = toy_run["sockets"]
    assert seen, "no listening socket seen: the ephemeral Prefect server at least should have been"
    exposed = sorted(s for s in seen if s[0] not in ("127.0.0.1", "::1"))
    assert not exposed, f"listening beyond loopback: {exposed}"


# ------------------------------------------------------------------------------ security, static

def _config_classes():
    """Every pydantic model class defined in seva_tasks (every module imported)."""
    import seva_tasks
    from pydantic import BaseModel

    for m in pkgutil.walk_packages(seva_tasks.__path__, "seva_tasks."):
        if "_shim" not in m.name and not m.name.endswith("vllm_worker"):
            __import__(m.name)
    seen, todo = set(), [BaseModel]
    while todo:
        for sub in todo.pop().__subclasses__():
            if sub not in seen:
                seen.add(sub)
                todo.append(sub)
    return [c for c in seen if c.__module__.startswith("seva_tasks")]


def test_trust_remote_code_is_off_unless_configured():
    with_field = [c for c in _config_classes() if "trust_remote_code" in c.model_fields]
    assert len(with_field) >= 2, with_field  # the engines' and train's at least
    for cls in with_field:
        assert cls.model_fields["trust_remote_code"].default is False, cls
    for preset in sorted((ROOT / "configs").glob("*.yaml")):
        dumped = json.dumps(load_config(preset.stem).model_dump(mode="json"))
        assert '"trust_remote_code": true' not in dumped, preset
    code = "\n".join(p.read_text() for d in ("seva_tasks", "flows") for p in (ROOT / d).rglob("*.py"))
    assert not re.search(r"trust_remote_code\s*=\s*True", code)


def test_prefect_server_is_started_on_loopback(monkeypatch, tmp_path):
    env = serve.prefect_env(4321, tmp_path)
    assert env["PREFECT_SERVER_API_HOST"] == "127.0.0.1"
    assert env["PREFECT_API_URL"].startswith("http://127.0.0.1:") and env["PREFECT_UI_URL"].startswith("http://127.0.0.1:")
    started = []

    class Exited:
        pid = 0

        def __init__(self, cmd, **kw):
            started.append((cmd, kw.get("env", {})))

        def poll(self):
            return 1

    monkeypatch.setattr(serve, "healthy", lambda port: False)
    monkeypatch.setattr(serve.subprocess, "Popen", Exited)
    with pytest.raises(SevaError, match="did not start on 127.0.0.1"):
        serve.start(4321, tmp_path)
    cmd, child_env = started[0]
    assert cmd[1:3] == ["server", "start"] and cmd[cmd.index("--host") + 1] == "127.0.0.1"
    assert child_env["PREFECT_SERVER_API_HOST"] == "127.0.0.1"


def test_local_judge_server_is_started_on_loopback(monkeypatch, tmp_path):
    from seva_tasks.benchmarks import judge

    started = []

    class Exited:
        pid, returncode = 0, 1

        def __init__(self, cmd, **kw):
            started.append(cmd)

        def poll(self):
            return 1

    monkeypatch.setattr(judge.subprocess, "Popen", Exited)
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"architectures": ["LlavaForConditionalGeneration"]}))
    with pytest.raises(StageError):
        with judge.local_vllm(model, Path(sys.executable), tmp_path / "judge.log"):
            pass
    cmd = started[0]
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"
