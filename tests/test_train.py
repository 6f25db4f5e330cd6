"""Stage `train`: TRL DPO + LoRA on the toy LLaVA; adapter, merged model (transformers + vLLM), resume, errors."""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path

import pytest

from seva_tasks import preference, toy
from seva_tasks.stages import train
from seva_tasks.errors import ConfigError, InputError, StageError
from seva_tasks.toy import ToyConfig
from seva_tasks.preference import PreferenceCollator
from seva_tasks.stages.train import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"

# High lr and a constant schedule so a handful of steps visibly moves the margins (as TRL's own tests do);
# 8 pairs ×2 in batches of 8: 2 steps per epoch, 6 steps, a checkpoint every 2.
FAST = dict(precision="fp32", gradient_checkpointing=True, learning_rate=3e-3, lr_scheduler_type="constant",
            lora_r=8, lora_alpha=16, per_device_train_batch_size=8, repeat=2, max_steps=6, save_steps=2,
            max_length=None, merged_dtype="float32", seed=0)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny matmuls on a shared 2-core box run ~3x faster on one thread."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def model_dir() -> Path:
    cfg = ToyConfig()
    toy.ensure(cfg)
    return toy.model_dir(cfg)


def _rows(n: int = 8) -> list[dict]:
    """Toy pairs in TRL's vision preference format: the true answer chosen, another record's answer rejected."""
    cfg = ToyConfig()
    root = toy.root_dir(cfg)
    recs = [r for r in json.loads(toy.mix_path(cfg).read_text()) if "image" in r][:n]
    rows = []
    for i, r in enumerate(recs):
        q = r["conversations"][0]["value"].replace("<image>", "").strip()
        wrong = recs[(i + 3) % n]["conversations"][1]["value"]
        rows.append({"images": [{"bytes": (toy.images_dir(cfg) / r["image"]).read_bytes(), "path": None}],
                     "prompt": [{"role": "user", "content": q}],
                     "chosen": [{"role": "assistant", "content": r["conversations"][1]["value"]}],
                     "rejected": [{"role": "assistant", "content": wrong}],
                     "id": r["id"], "image_path": str(root / "images" / r["image"])})
    return rows


def _write_pairs(d: Path, rows: list[dict]) -> Path:
    """pairs.parquet exactly as the filter stage writes it (datasets features in the schema)."""
    import polars as pl

    from seva_tasks.stages import filter as filter_stage

    d.mkdir(parents=True, exist_ok=True)
    schema = {"images": pl.List(pl.Struct({"bytes": pl.Binary, "path": pl.String})),
              **{k: pl.List(pl.Struct({"role": pl.String, "content": pl.String})) for k in ("prompt", "chosen", "rejected")},
              "id": pl.String, "image_path": pl.String}
    cols = [c for c in schema if not rows or c in rows[0]]
    df = pl.DataFrame([{c: r[c] for c in cols} for r in rows], schema={c: schema[c] for c in cols})
    filter_stage._write(df, d / filter_stage.OUTPUT)
    return d


@pytest.fixture(scope="module")
def trained(tmp_path_factory, model_dir):
    """One uninterrupted `fit` + `merge` shared by the outcome tests (and the resume test's baseline)."""
    d = tmp_path_factory.mktemp("train")
    filt = _write_pairs(d / "filter", _rows())
    cfg = TrainConfig(**FAST)
    out = d / "out"
    out.mkdir()
    trainer = train.fit(cfg, model_dir, filt / "pairs.parquet", out)
    train.merge(cfg, model_dir, out)
    return cfg, filt, out, trainer


def _batch(model_dir: Path, n: int = 2):
    """A processed (prompt, image) batch to compare logits on."""
    from PIL import Image
    from transformers import AutoProcessor

    proc = AutoProcessor.from_pretrained(model_dir)
    rows = _rows(n)
    texts = [toy.prompt(r["prompt"][0]["content"]) + " " + r["chosen"][0]["content"] for r in rows]
    images = [Image.open(r["image_path"]).convert("RGB") for r in rows]
    return proc(images=images, text=texts, return_tensors="pt", padding=True)


def _logits(model, batch):
    import torch

    with torch.no_grad():
        return model.eval()(**batch).logits.float()


# ---- the training sequence ----


def test_training_sequence_is_llava_preprocess_v1_not_the_checkpoint_template(model_dir):
    """The toy model carries llava-hf's real chat template (no system prompt, no </s>); DPO still scores
    LLaVA's preprocess_v1 string, tokenized as one string, with the loss on the answer and </s>."""
    from PIL import Image
    from transformers import AutoConfig, AutoProcessor

    from seva_tasks.llava.prompts import SYSTEMS

    proc, config = AutoProcessor.from_pretrained(model_dir), AutoConfig.from_pretrained(model_dir)
    tok, rows = proc.tokenizer, [{**r, "images": [Image.open(r["image_path"])]} for r in _rows(2)]  # as datasets decodes
    batch = PreferenceCollator(proc, "vicuna_v1")(rows)
    assert batch["input_ids"].shape[0] == 4 and batch["pixel_values"].shape[0] == 4  # [chosen x2, rejected x2]
    for i, (row, side) in enumerate((r, s) for s in ("chosen", "rejected") for r in rows):
        q, a = row["prompt"][0]["content"], row[side][0]["content"]
        expected = f"{SYSTEMS['vicuna_v1']} USER: <image>\n{q} ASSISTANT: {a}</s>"  # LLaVA's conv.get_prompt()
        keep = batch["attention_mask"][i].bool()
        ids, loss = batch["input_ids"][i][keep].tolist(), batch["completion_mask"][i][keep].tolist()
        assert ids[0] == tok.bos_token_id and ids.count(config.image_token_index) == 16
        assert tok.decode(ids[1:]) == expected.replace("<image>", "<image>" * 16)
        whole = tok(expected).input_ids  # the string tokenized at once, as LLaVA's preprocess_v1 does
        at = whole.index(config.image_token_index)
        assert ids == whole[:at] + whole[at:at + 1] * 16 + whole[at + 1:]
        answer = [t for t, x in zip(ids, loss) if x]
        assert answer[-1] == tok.eos_token_id and tok.decode(answer) == f"{a}</s>" and loss[-len(answer):] == [1] * len(answer)
    # The control: the checkpoint's template (what TRL's collator would render) is not that string.
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Q?"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "A."}]}]
    rendered = proc.apply_chat_template(messages)
    assert SYSTEMS["vicuna_v1"] not in rendered and "</s>" not in rendered


def test_encode_refuses_a_token_across_the_answer_boundary(model_dir):
    from transformers import AutoTokenizer

    from seva_tasks.llava.prompts import encode

    tok = AutoTokenizer.from_pretrained(model_dir)
    ids, loss = encode(tok, [("USER: hi ASSISTANT:", False), (" red</s>", True)])
    assert tok.convert_ids_to_tokens([t for t, x in zip(ids, loss) if x]) == ["\u2581red", "</s>"]
    with pytest.raises(ValueError, match="boundary"):
        encode(tok, [("USER: hi ASSISTANT: re", False), ("d</s>", True)])  # `▁red` would straddle it


def test_show_example_prints_what_dpo_trains_on(tmp_path, model_dir):
    filt = _write_pairs(tmp_path / "filter", _rows(2))
    text = train.show_example(TrainConfig(**FAST), model_dir, filt / "pairs.parquet")
    assert "A chat between a curious user" in text and "<image>×16" in text
    chosen, rejected = (line for line in text.splitlines() if line.startswith("  \u2581"))
    assert chosen.endswith("</s>") and rejected.endswith("</s>")
    assert "pixel_values: (2, 3, 64, 64)" in text


# ---- outcome ----


def test_dpo_steps_raise_reward_margins(trained):
    """On the fixed pairs, the implicit reward margin goes from 0 (policy == reference) to clearly positive."""
    _, filt, _, trainer = trained
    logs = [h for h in trainer.state.log_history if "rewards/margins" in h]
    assert len(logs) == 6 and logs[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-6)
    after = trainer.evaluate(eval_dataset=preference.load_pairs(filt / "pairs.parquet"))
    assert after["eval_rewards/margins"] > 0.1 and after["eval_rewards/accuracies"] >= 0.75, after
    assert after["eval_loss"] < 0.69  # below log 2, the loss at margin 0


def test_stats_and_files_record_every_logging_step(trained):
    cfg, _, out, trainer = trained
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [x for x in lines if "loss" in x]
    assert [x["step"] for x in steps] == [1, 2, 3, 4, 5, 6]
    for key in ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins"):
        assert all(key in x for x in steps)
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 6
    info = json.loads((out / "checkpoints" / "run_info.json").read_text())
    # wall-clock figures in the manifest only: a rerun publishes the same bytes, so downstream keys hold
    published = (out / "metrics.jsonl").read_text() + (out / "trainer_state.json").read_text()
    assert not any(k in published for k in train.WALL_CLOCK) and info["timing"]["train_runtime"] > 0
    assert info["lengths"]["image_tokens"] == ToyConfig().image_tokens and info["resumed_from_step"] is None
    assert info["trainable"]["lora"] > 0 and info["trainable"]["modules_to_save"] > 0 and info["trainable"]["other"] == 0
    assert (out / "adapter" / "adapter_model.safetensors").is_file()


def test_only_lora_and_projector_change_the_model(trained, model_dir):
    from safetensors.torch import load_file

    _, _, out, _ = trained
    base, merged = load_file(model_dir / "model.safetensors"), load_file(out / "merged" / "model.safetensors")
    assert set(base) == set(merged)  # same (llava-hf, vLLM-ready) names as the toy checkpoint
    changed = {k for k in base if not (base[k] == merged[k]).all()}
    assert not any(k.startswith("vision_tower.") for k in changed)  # frozen
    assert any(k.startswith("multi_modal_projector.") for k in changed)  # modules_to_save
    lora_names = tuple(f"{m}.weight" for m in train.LLM_LINEARS)
    assert {k for k in changed if k.startswith("language_model.")} == {k for k in base if k.startswith("language_model.model.layers.") and k.endswith(lora_names)}


def _projectors(trainer, model_dir):
    """(reference's projector, policy's projector, base model's projector) outputs on one input."""
    import torch

    x = torch.randn(1, 4, trainer.model.config.vision_config.hidden_size, generator=torch.Generator().manual_seed(0))
    (wrapper,) = [m for m in trainer.model.modules() if type(m).__name__ == "ModulesToSaveWrapper"]
    base = train.load_model(TrainConfig(**FAST), model_dir).model.multi_modal_projector
    with torch.no_grad():
        with trainer.model.disable_adapter():
            ref = wrapper(x)
        return ref, wrapper(x), base(x)


def test_reference_projector_is_the_original_or_the_current_one(trained, model_dir, tmp_path):
    import torch

    ref, policy, base = _projectors(trained[3], model_dir)  # default: TRL's, the base model's projector
    assert torch.equal(ref, base) and not torch.allclose(policy, base, atol=1e-4)
    filt = _write_pairs(tmp_path / "filter", _rows(4))
    (tmp_path / "out").mkdir()
    trainer = train.fit(TrainConfig(**{**FAST, "max_steps": 2, "per_device_train_batch_size": 4,
                                       "reference_projector": "current"}), model_dir, filt / "pairs.parquet", tmp_path / "out")
    ref, policy, base = _projectors(trainer, model_dir)  # SeVa's: the policy's trained projector
    assert torch.equal(ref, policy) and not torch.allclose(ref, base, atol=1e-4)


def test_adapter_reloads_with_same_logits(trained, model_dir):
    from peft import PeftModel

    cfg, _, out, trainer = trained
    batch = _batch(model_dir)
    reloaded = PeftModel.from_pretrained(train.load_model(cfg, model_dir), out / "adapter")
    import torch

    assert torch.allclose(_logits(trainer.model, batch), _logits(reloaded, batch), atol=1e-5)


def test_adapter_names_its_base_by_content_not_by_place(trained, model_dir):
    """The key counts the model by content, and a stored base's path holds upstream keys: the adapter's config and
    model card name the base by its fingerprint, as generate's `model` column does."""
    from seva_tasks.fingerprint import fingerprint

    _, _, out, _ = trained
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == fingerprint(model_dir) and len(config["base_model_name_or_path"]) == 64
    card = (out / "adapter" / "README.md").read_text()
    assert str(model_dir) not in card and f"base_model: {fingerprint(model_dir)}" in card


def test_merged_model_loads_in_transformers_with_adapter_logits(trained, model_dir):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText, AutoProcessor

    cfg, _, out, _ = trained
    batch = _batch(model_dir)
    merged = AutoModelForImageTextToText.from_pretrained(out / "merged")
    peft = PeftModel.from_pretrained(train.load_model(cfg, model_dir), out / "adapter")
    base = train.load_model(cfg, model_dir)
    assert torch.allclose(_logits(merged, batch), _logits(peft, batch), atol=1e-4)
    assert not torch.allclose(_logits(merged, batch), _logits(base, batch), atol=1e-3)
    proc = AutoProcessor.from_pretrained(out / "merged")
    assert proc.chat_template == AutoProcessor.from_pretrained(model_dir).chat_template  # no training BOS tweak


ENGINES_SCRIPT = textwrap.dedent("""
    import json, sys
    from seva_tasks.engines import Request, WorkerSpec, make_engine
    model, prompts = sys.argv[1], json.loads(sys.argv[2])
    reqs = [Request(req_id=str(i), prompt=p, image=img) for i, (p, img) in enumerate(prompts)]
    out = {}
    for engine in ("vllm", "hf"):
        cfg = WorkerSpec(kind=engine, model=model, dtype="float32", max_new_tokens=16, max_model_len=512,
                           kv_cache_memory_bytes=64 << 20, vllm_args={"enforce_eager": True})
        out[engine] = [o.token_ids for o in make_engine(cfg).generate(reqs)]
    print("RESULT " + json.dumps(out))
""")


@pytest.mark.slow
@pytest.mark.skipif(not VLLM_PYTHON.exists(), reason="engine env .venv-vllm not installed")
def test_merged_model_generates_with_vllm_like_transformers(trained, tmp_path):
    """The generate/evaluate engines load merged/ in the engine env; vLLM and HF greedy agree token for token."""
    from seva_tasks.engines import EngineConfig
    from seva_tasks.engines.vllm_worker import worker_env

    _, _, out, _ = trained
    prompts = [(toy.prompt(r["prompt"][0]["content"]), r["image_path"]) for r in _rows(2)]
    env = worker_env(os.environ, EngineConfig(kind="vllm"))
    env["PYTHONPATH"] += f":{ROOT}"
    res = subprocess.run([str(VLLM_PYTHON), "-c", ENGINES_SCRIPT, str(out / "merged"), json.dumps(prompts)],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    ids = json.loads(next(x for x in res.stdout.splitlines() if x.startswith("RESULT "))[7:])
    assert all(ids["vllm"]) and ids["vllm"] == ids["hf"]


# ---- resume ----


def test_rerun_resumes_from_last_checkpoint_after_interruption(trained, model_dir, tmp_path, monkeypatch):
    import torch
    from safetensors.torch import load_file
    from trl import DPOTrainer

    cfg, filt, base_out, _ = trained
    out = tmp_path / ".key.partial"  # what the store hands a resumable stage
    out.mkdir()
    original = DPOTrainer._save_checkpoint

    def crash_after_step_4(self, model, trial):
        original(self, model, trial)
        if self.state.global_step == 4:
            raise KeyboardInterrupt("simulated kill after the step-4 checkpoint")

    monkeypatch.setattr(DPOTrainer, "_save_checkpoint", crash_after_step_4)
    with pytest.raises(KeyboardInterrupt):
        train.run(cfg, {"filter": filt, "model": model_dir}, out)
    assert sorted(p.name for p in (out / "checkpoints").glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    monkeypatch.setattr(DPOTrainer, "_save_checkpoint", original)

    stats = train.run(cfg, {"filter": filt, "model": model_dir}, out)
    assert stats["resumed_from_step"] == 4 and stats["counts"]["steps"] == 6
    assert [m["step"] for m in stats["metrics"]] == [1, 2, 3, 4, 5, 6]  # history restored from the checkpoint
    assert not (out / "checkpoints").exists() and (out / "merged" / "config.json").is_file()
    resumed, straight = load_file(out / "adapter" / "adapter_model.safetensors"), load_file(base_out / "adapter" / "adapter_model.safetensors")
    assert resumed.keys() == straight.keys()
    assert all(torch.allclose(resumed[k], straight[k], atol=1e-6) for k in resumed)  # same as never interrupted


# ---- clear errors ----


def test_missing_columns_is_an_input_error(tmp_path, model_dir):
    import polars as pl

    filt = tmp_path / "filter"
    filt.mkdir()
    pl.DataFrame([{k: v for k, v in r.items() if k != "rejected"} for r in _rows(2)]).write_parquet(filt / "pairs.parquet")
    with pytest.raises(InputError, match="lacks column.*rejected"):
        train.run(TrainConfig(**FAST), {"filter": filt, "model": model_dir}, tmp_path / "out")


def test_empty_pairs_is_an_input_error(tmp_path, model_dir):
    filt = _write_pairs(tmp_path / "filter", [])
    with pytest.raises(InputError, match="no pairs"):
        train.run(TrainConfig(**FAST), {"filter": filt, "model": model_dir}, tmp_path / "out")


def test_missing_base_model_is_an_input_error(tmp_path):
    filt = _write_pairs(tmp_path / "filter", _rows(1))
    with pytest.raises(InputError, match="Base model not found"):
        train.run(TrainConfig(**FAST), {"filter": filt, "model": tmp_path / "nope"}, tmp_path / "out")


def test_max_length_that_cuts_image_tokens_is_a_config_error(tmp_path, model_dir):
    filt = _write_pairs(tmp_path / "filter", _rows(2))
    cfg = TrainConfig(**{**FAST, "max_length": ToyConfig().image_tokens + 4})
    with pytest.raises(ConfigError, match="would cut image tokens.*max_length >= "):
        train.run(cfg, {"filter": filt, "model": model_dir}, tmp_path / "out")
    assert not (tmp_path / "out" / "checkpoints").exists()  # refused before training


def test_image_token_in_the_question_moves_to_the_front_or_is_an_input_error(tmp_path, model_dir):
    from transformers import AutoProcessor

    clean, rows = _rows(2), _rows(2)
    rows[1]["prompt"][0]["content"] = rows[1]["prompt"][0]["content"] + "\n<image>"
    filt = _write_pairs(tmp_path / "filter", rows)
    proc = AutoProcessor.from_pretrained(model_dir)
    lengths = [preference.token_lengths(preference.load_pairs(_write_pairs(tmp_path / name, r) / "pairs.parquet"),
                                         TrainConfig(**FAST).conv_template, proc)[0] for name, r in (("clean", clean), ("tagged", rows))]
    assert lengths[0] == lengths[1]  # LLaVA templates: preprocess_multimodal's rule, the image leads the question, once
    # the checkpoint's template renders the text as it is: two image slots for one image
    with pytest.raises(InputError, match="literal '<image>'.*pair 1"):
        train.run(TrainConfig(**FAST, conv_template="chat_template"), {"filter": filt, "model": model_dir}, tmp_path / "out")


def test_lora_targets_that_match_nothing_are_a_config_error(tmp_path, model_dir):
    filt = _write_pairs(tmp_path / "filter", _rows(2))
    cfg = TrainConfig(**{**FAST, "lora_scope": "text_model", "modules_to_save": ["mm_projector"]})
    with pytest.raises(ConfigError, match="match no module(.|\n)*no module named 'mm_projector'"):
        train.run(cfg, {"filter": filt, "model": model_dir}, tmp_path / "out")


def test_pairs_with_image_paths_instead_of_bytes_load(tmp_path):
    """filter.images=path writes {bytes: null, path: absolute}; those decode the same as bytes."""
    rows = _rows(2)
    with_paths = [{**r, "images": [{"bytes": None, "path": r["image_path"]}]} for r in rows]
    a = preference.load_pairs(_write_pairs(tmp_path / "a", with_paths) / "pairs.parquet")
    b = preference.load_pairs(_write_pairs(tmp_path / "b", rows) / "pairs.parquet")
    assert [x[0].tobytes() for x in a["images"]] == [x[0].tobytes() for x in b["images"]]


LN2 = 0.6931471805599453


def test_each_loss_of_the_family_is_the_one_trl_computes(tmp_path, model_dir):
    """Every loss runs end to end; at step 1 the policy is the reference (LoRA B = 0), so every margin is 0
    and TRL's first logged loss has a closed form: sigmoid and robust ln 2, IPO (0 - 1/(2β))² = 25 at β = 0.1,
    bco_pair 2 ln 2, and a weighted sum adds each part (the 'sft' part is the sft-only run's first loss).
    After six steps every preference loss prefers the training pairs' chosen answers (rewards/accuracies > 0.5)."""
    filt = _write_pairs(tmp_path / "filter", _rows())
    first, accuracy = {}, {}
    cases = {"sft": {"loss_type": "sft"}, "sigmoid": {}, "ipo": {"loss_type": "ipo"},
             "robust": {"loss_type": "robust", "label_smoothing": 0.1},
             "mpo": {"loss_type": ["sigmoid", "bco_pair", "sft"], "loss_weights": [0.8, 0.2, 1.0]},
             "rpo": {"rpo_alpha": 0.5}}
    for name, over in cases.items():
        out = tmp_path / name
        out.mkdir()
        trainer = train.fit(TrainConfig(**{**FAST, **over}), model_dir, filt / "pairs.parquet", out)
        assert trainer.loss_types == TrainConfig(**over).losses()[0]
        first[name] = trainer.state.log_history[0]["loss"]
        accuracy[name] = trainer.evaluate(eval_dataset=preference.load_pairs(filt / "pairs.parquet"))["eval_rewards/accuracies"]
    expected = {"sigmoid": LN2, "robust": LN2, "ipo": 25.0, "mpo": 0.8 * LN2 + 0.2 * 2 * LN2 + first["sft"],
                "rpo": LN2 + 0.5 * first["sft"]}
    for name, value in expected.items():
        assert first[name] == pytest.approx(value, rel=1e-3), (name, first)
    assert first["sft"] > 1.0  # a mean token NLL, not a DPO loss at a zero margin
    # every preference loss prefers the chosen answers; SFT alone need not: each rejected answer is another
    # pair's chosen one, which it trains up too (measured 0.5 on the current world)
    assert all(a > 0.5 for name, a in accuracy.items() if name != "sft"), accuracy


def test_loss_settings_are_checked_at_config_load():
    with pytest.raises(ValueError, match=r"unknown loss \['dpo'\]"):
        TrainConfig(loss_type="dpo")
    with pytest.raises(ValueError, match="1 weights for loss_type"):
        TrainConfig(loss_type=["sigmoid", "ipo"], loss_weights=[1.0])
    with pytest.raises(ValueError, match="label_smoothing must be > 0 with loss 'exo_pair'"):
        TrainConfig(loss_type="exo_pair")
    with pytest.raises(ValueError, match="label_smoothing"):
        TrainConfig(loss_type="robust", label_smoothing=0.5)
    assert TrainConfig(rpo_alpha=0.5, loss_weights=[2.0]).losses() == (["sigmoid", "sft"], [2.0, 0.5])


def test_controls_change_only_what_they_name(tmp_path):
    """The experiment's controls on the same pairs: swapped sides, shuffled rejected answers, a blank image."""
    rows = _rows(4)
    path = _write_pairs(tmp_path / "f", rows) / "pairs.parquet"
    same = preference.load_pairs(path)
    swapped = preference.load_pairs(path, "swapped")
    assert swapped["chosen"] == same["rejected"] and swapped["rejected"] == same["chosen"]
    shuffled = preference.load_pairs(path, "shuffled", seed=1)  # shift 1 + 1 % 3 = 2
    assert shuffled["chosen"] == same["chosen"] and shuffled["rejected"] == [same["rejected"][(i + 2) % 4] for i in range(4)]
    assert preference.load_pairs(path, "shuffled", seed=0)["rejected"] == [same["rejected"][(i + 1) % 4] for i in range(4)]
    blank = preference.load_pairs(path, "blank_image")
    assert blank["chosen"] == same["chosen"] and blank["rejected"] == same["rejected"]
    assert {im[0].getextrema() for im in blank["images"]} == {((128, 128), (128, 128), (128, 128))}


# ---- config and multi-GPU launch ----


def test_num_processes_above_one_defaults_to_the_ddp_config():
    from seva_tasks import launch

    assert launch.config_file(None, 2) == ROOT / "configs" / "accelerate" / "ddp.yaml"
    assert launch.config_file(None, 1) is None and TrainConfig(num_processes=8).accelerate_config is None


def test_ddp_and_zero2_accelerate_configs_parse():
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DeepSpeedPlugin

    ddp = load_config_from_file(str(ROOT / "configs" / "accelerate" / "ddp.yaml"))
    assert ddp.distributed_type == "MULTI_GPU" and ddp.main_process_port == 0  # MULTI_CPU would start one process
    z2 = load_config_from_file(str(ROOT / "configs" / "accelerate" / "zero2.yaml"))
    plugin = DeepSpeedPlugin(hf_ds_config=str(ROOT / z2.deepspeed_config["deepspeed_config_file"]), zero3_init_flag=False)
    assert z2.distributed_type == "DEEPSPEED" and plugin.zero_stage == 2 and not plugin.hf_ds_config.is_zero3()


def test_zero3_accelerate_config_parses():
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DeepSpeedPlugin

    yaml_path = ROOT / "configs" / "accelerate" / "zero3.yaml"
    cfg = load_config_from_file(str(yaml_path))
    assert cfg.distributed_type == "DEEPSPEED" and cfg.mixed_precision == "bf16"
    ds_file = ROOT / cfg.deepspeed_config["deepspeed_config_file"]
    plugin = DeepSpeedPlugin(hf_ds_config=str(ds_file), zero3_init_flag=cfg.deepspeed_config["zero3_init_flag"])
    assert plugin.zero_stage == 3 and plugin.hf_ds_config.is_zero3()
    assert plugin.deepspeed_config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    assert plugin.deepspeed_config["bf16"]["enabled"] == "auto"  # filled from DPOConfig(bf16=...) by transformers


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_matches_one_process_at_the_same_global_batch(trained, tmp_path, model_dir):
    """`train.num_processes=2` (configs/accelerate/ddp.yaml, gloo): 2 × 4 pairs per step against `trained`'s 1 × 8.

    Both see the same pairs per step (accelerate shards each global batch of the seeded sampler), start
    from the same seeded LoRA init, and DDP averages the two halves' gradients = the mean over 8. What
    differs is float32 summation order (per-half losses, gloo's all-reduce) and padding to the longest
    of 4 rows instead of 8. Measured (2026-12-01): losses within 1.7e-7 relative, reward margins (small
    numbers) within 5.7e-6; at world size 1 (1 x 4 pairs per step, what the MULTI_CPU config did) they
    part from step 2 by >= 9.3e-4 (loss) and >= 6.7e-2 (margins). Tolerances 1e-5 and 1e-3 sit between."""
    single_cfg, _, single_out, _ = trained
    filt = _write_pairs(tmp_path / "filter", _rows())
    cfg = TrainConfig(**{**FAST, "per_device_train_batch_size": 4, "num_processes": 2, "save_steps": 100})
    stats = train.run(cfg, {"filter": filt, "model": model_dir}, tmp_path / "out")
    assert stats["processes"] == 2 and stats["global_batch"] == single_cfg.per_device_train_batch_size == 8
    single = [json.loads(line) for line in (single_out / "metrics.jsonl").read_text().splitlines()]
    single = [r for r in single if "loss" in r]
    assert [m["step"] for m in stats["metrics"]] == [r["step"] for r in single] == list(range(1, 7))
    for m, r in zip(stats["metrics"], single):
        assert m["loss"] == pytest.approx(r["loss"], rel=1e-5), (m["step"], m["loss"], r["loss"])
        assert m["rewards/margins"] == pytest.approx(r["rewards/margins"], rel=1e-3, abs=1e-7), (m["step"], m, r)
    from peft import PeftModel

    PeftModel.from_pretrained(train.load_model(cfg, model_dir, "float32"), tmp_path / "out" / "adapter")
    assert (tmp_path / "out" / "merged" / "model.safetensors").is_file()


@pytest.mark.slow
def test_a_multi_cpu_accelerate_config_is_an_error_naming_the_world_size(tmp_path, model_dir):
    """accelerate's MULTI_CPU type starts one process without mpirun: caught, not trained at half the batch."""
    acc = tmp_path / "multi_cpu.yaml"
    acc.write_text("compute_environment: LOCAL_MACHINE\ndistributed_type: MULTI_CPU\nmixed_precision: 'no'\n"
                   "num_machines: 1\nnum_processes: 2\nuse_cpu: true\n")
    cfg = TrainConfig(accelerate_config=acc, **{**FAST, "num_processes": 2, "per_device_train_batch_size": 4, "max_steps": 1})
    with pytest.raises(StageError, match=r"world size 1, not train.num_processes=2(.|\n)*configs/accelerate/ddp.yaml"):
        train.run(cfg, {"filter": _write_pairs(tmp_path / "filter", _rows()), "model": model_dir}, tmp_path / "out")
