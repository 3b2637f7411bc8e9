from pathlib import Path

import pytest
from pydantic import ValidationError

from qft_core.config import ConfigError, EvalConfig, QftConfig, config_from_dict, dump_config, load_config


def test_no_file_gives_cpu_defaults():
    config = load_config(None)
    assert config.model.name == "qwen3-tiny"
    assert config.training.nproc == 1
    assert (config.split.train, config.split.validation, config.split.test) == (0.8, 0.1, 0.1)


def test_yaml_values_override_defaults_and_keep_the_rest(tmp_path: Path):
    path = tmp_path / "qft.yaml"
    path.write_text("training:\n  learning_rate: 0.0001\n  nproc: 2\nsplit:\n  seed: 7\n", encoding="utf-8")
    config = load_config(path)
    assert config.training.learning_rate == 0.0001
    assert config.training.nproc == 2
    assert config.split.seed == 7
    assert config.training.epochs == QftConfig().training.epochs


def test_error_names_the_file_and_the_key(tmp_path: Path):
    path = tmp_path / "bad.yaml"
    path.write_text("lora:\n  r: 0\n", encoding="utf-8")
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert str(path) in str(raised.value)
    assert "key 'lora.r'" in str(raised.value)


def test_unknown_key_is_rejected_by_name(tmp_path: Path):
    path = tmp_path / "typo.yaml"
    path.write_text("training:\n  learnin_rate: 0.1\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"key 'training.learnin_rate'"):
        load_config(path)


def test_split_ratios_must_sum_to_one(tmp_path: Path):
    path = tmp_path / "split.yaml"
    path.write_text("split:\n  train: 0.9\n  validation: 0.1\n  test: 0.1\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="must be 1.0, got 1.1000"):
        load_config(path)


def test_invalid_yaml_and_missing_file_are_config_errors(tmp_path: Path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("training: [unclosed\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "absent.yaml")


def test_dumped_config_reloads_identically(tmp_path: Path):
    config = QftConfig()
    config.training.learning_rate = 3e-4
    path = tmp_path / "round.yaml"
    path.write_text(dump_config(config), encoding="utf-8")
    assert load_config(path) == config


def test_thinking_budget_must_be_smaller_than_max_new_tokens(tmp_path: Path):
    path = tmp_path / "eval.yaml"
    path.write_text("eval:\n  max_new_tokens: 128\n  thinking_budget: 128\n", encoding="utf-8")
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    message = str(raised.value)
    assert str(path) in message and "key 'eval'" in message
    assert "thinking_budget (128) must be smaller than max_new_tokens (128)" in message


def test_thinking_budget_just_below_max_new_tokens_or_zero_is_valid():
    assert EvalConfig(max_new_tokens=128, thinking_budget=127).thinking_budget == 127
    assert EvalConfig(max_new_tokens=1, thinking_budget=0).max_new_tokens == 1


def test_lowering_max_new_tokens_under_the_budget_is_refused_on_assignment():
    config = EvalConfig()
    with pytest.raises(ValidationError, match=r"thinking_budget \(96\) must be smaller than max_new_tokens \(50\)"):
        config.max_new_tokens = 50


def test_the_deployed_variant_must_be_one_the_run_quantizes():
    config_from_dict({"export": {"deployed_variant": "int8"}})
    with pytest.raises(ConfigError, match=r"export.deployed_variant 'gptq' is not among quant.formats \['int8'\]"):
        config_from_dict({"quant": {"formats": ["int8"]}, "export": {"deployed_variant": "gptq"}})


def test_the_cpu_demo_config_loads_and_names_the_pretrained_smollm2():
    from qft_core.config import REPO_ROOT

    config = load_config(REPO_ROOT / "configs" / "cpu-demo.yaml")
    assert (config.model.name, config.training.max_steps, config.eval.max_examples) == ("smollm2-135m", 8, 4)
    assert config.export.deployed_variant == "unquantized" and config.quant.formats == ["int8"]


def test_the_template_writes_missing_reasoning_by_default():
    assert load_config(None).reasoning.writer == "template"


@pytest.mark.parametrize(
    ("reasoning", "message"),
    [
        ("  endpoint_url: ftp://models.example/v1\n",
         "key 'reasoning.endpoint_url': Value error, 'ftp://models.example/v1' is not an http(s) URL with a host"),
        ("  endpoint_url: http://localhost:8000/v1/chat/completions\n",
         "key 'reasoning.endpoint_url': Value error, 'http://localhost:8000/v1/chat/completions' is the chat "
         "completions path; give the base URL (…/v1) that precedes it"),
        ("  api_key_env: sk-abc123\n",
         "key 'reasoning.api_key_env': Value error, must be the NAME of an environment variable"),
        ("  writer: endpoint\n  endpoint_model: qwen-plus\n",
         "key 'reasoning': Value error, reasoning.writer is 'endpoint' but reasoning.endpoint_url is empty"),
        ("  writer: endpoint\n",
         "reasoning.writer is 'endpoint' but reasoning.endpoint_url and reasoning.endpoint_model are empty"),
        ("  max_new_tokens: 512\n  thinking_budget: 512\n",
         "reasoning.thinking_budget (512) must be smaller than reasoning.max_new_tokens (512)"),
    ],
)
def test_a_bad_reasoning_endpoint_setting_fails_naming_the_file_and_the_key(tmp_path: Path, reasoning, message):
    path = tmp_path / "writer.yaml"
    path.write_text("reasoning:\n" + reasoning, encoding="utf-8")
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert str(path) in str(raised.value) and message in str(raised.value)


def test_a_complete_endpoint_setting_loads_with_the_base_url_trimmed():
    config = config_from_dict({"reasoning": {
        "writer": "endpoint", "endpoint_url": "https://api.example.com/v1/", "endpoint_model": "qwen-plus",
        "api_key_env": "QWEN_API_KEY",
    }})
    assert (config.reasoning.endpoint_url, config.reasoning.api_key_env) == ("https://api.example.com/v1", "QWEN_API_KEY")
