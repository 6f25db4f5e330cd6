"""Presets, dotted overrides, and the errors a user sees for bad ones."""

from __future__ import annotations

import pytest

from seva_tasks.cli import main
from seva_tasks.config import CONFIGS, load_config, parse_overrides
from seva_tasks.errors import ConfigError


def test_every_preset_loads():
    for path in CONFIGS.glob("*.yaml"):
        assert load_config(path.stem).preset == path.stem


def test_overrides_parse_as_yaml_and_apply():
    cfg = load_config("toy", ["sample.seed=3", "augment.noise_step=800", "augment.mode=pixel"])
    assert (cfg.sample.seed, cfg.augment.noise_step, cfg.augment.mode) == (3, 800, "pixel")
    assert parse_overrides({"augment.noise_step": 800}) == {"augment.noise_step": 800}


def test_nested_mapping_override():
    cfg = load_config("toy", ["sample.subsets.ocr_vqa.images=5"])
    assert cfg.sample.subsets["ocr_vqa"].images == 5


def test_all_errors_reported_at_once_naming_each_key():
    with pytest.raises(ConfigError) as e:
        load_config("toy", ["augment.nois=3", "sample.seed=abc", "nope.x=1", "augment.noise_step=1000"])
    msg = str(e.value)
    assert "augment.nois: unknown key 'nois'" in msg
    assert "sample.seed" in msg and "'abc'" in msg
    assert "nope.x: unknown key 'nope'" in msg
    assert "augment.noise_step" in msg  # out of range: T=1000 steps are 0..999


def test_engine_settings_compose_under_each_stage():
    cfg = load_config("toy", ["generate.engine.kind=hf", "evaluate.engine.max_model_len=2048", "model=/models/llava"])
    assert (cfg.generate.engine.kind, cfg.evaluate.engine.kind) == ("hf", "vllm")
    assert cfg.evaluate.engine.max_model_len == 2048 and str(cfg.model) == "/models/llava"
    with pytest.raises(ConfigError) as e:
        load_config("toy", ["generate.engine.knd=hf", "generate.model=x", "evaluate.engine.kind=tgi"])
    msg = str(e.value)
    assert "generate.engine.knd: unknown key 'knd'" in msg
    assert "generate.model: unknown key 'model'" in msg  # the model is the run's input, not a stage setting
    assert "evaluate.engine.kind" in msg and "'tgi'" in msg


def test_malformed_override_and_unknown_preset():
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["augment.noise_step"])
    with pytest.raises(ConfigError, match="Known presets: .*toy"):
        load_config("no-such-preset")


def test_config_is_frozen():
    cfg = load_config("toy")
    with pytest.raises(Exception):
        cfg.augment.noise_step = 1  # type: ignore[misc]


def test_cli_reports_config_error_without_traceback(capsys):
    assert main(["status", "augment.nois=3"]) == 2
    assert "augment.nois: unknown key" in capsys.readouterr().err


def test_overrides_may_follow_an_option_on_the_command_line():
    from seva_tasks import cli

    ns = cli.parse(["run", "toy-miniature", "--until", "pretrain", "pretrain.seed=1", "--refresh", "vicuna"])
    assert (ns.args, ns.until, ns.refresh) == (["toy-miniature", "pretrain.seed=1"], "pretrain", ["vicuna"])
    ns = cli.parse(["score", "pope", "--data", "d", "--answers", "a.jsonl", "judge.runs=2"])
    assert ns.judge == ["judge.runs=2"] and not hasattr(ns, "args")
    with pytest.raises(SystemExit):
        cli.parse(["run", "toy", "--until", "pretrain", "--bogus"])
