"""The one device setting: `model.device` (or --device) resolves to the device every stage runs on, and `cuda`
without a GPU is a one-line error that names the setting."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from qft_core.cli import main as qft_main
from qft_core.config import ConfigError, load_config
from qft_core.device import DeviceUnavailableError, resolve_device
from qft_core.model.registry import torch_dtype


@pytest.mark.parametrize(
    ("setting", "cuda_available", "expected"),
    [("auto", True, "cuda"), ("auto", False, "cpu"), ("cpu", True, "cpu"), ("cpu", False, "cpu"), ("cuda", True, "cuda")],
)
def test_each_setting_resolves_to_its_device(setting, cuda_available, expected):
    assert resolve_device(setting, cuda_available=cuda_available) == expected


def test_cuda_without_a_gpu_is_an_error_naming_the_setting():
    with pytest.raises(DeviceUnavailableError) as raised:
        resolve_device("cuda", cuda_available=False)
    message = str(raised.value)
    assert "model.device" in message and "\n" not in message
    assert isinstance(raised.value, ConfigError)  # the CLI prints ConfigErrors as one line


def test_auto_follows_what_torch_sees():
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")


def test_an_unknown_setting_is_refused_by_key():
    with pytest.raises(ConfigError, match="'model.device': 'tpu'"):
        resolve_device("tpu")


def test_the_device_override_replaces_the_files_setting(tmp_path: Path):
    path = tmp_path / "qft.yaml"
    path.write_text("model:\n  device: cuda\n  max_length: 512\n", encoding="utf-8")
    assert load_config(path).model.device == "cuda"
    overridden = load_config(path, device="cpu")
    assert (overridden.model.device, overridden.model.max_length) == ("cpu", 512)
    assert load_config(None, device="cpu").model.device == "cpu"
    assert load_config(None).model.device == "auto"


def test_a_device_outside_the_choices_is_a_config_error_naming_the_key(tmp_path: Path):
    path = tmp_path / "qft.yaml"
    path.write_text("model:\n  device: gpu\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="key 'model.device'"):
        load_config(path)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error of a machine without a GPU")
def test_qft_plan_with_device_cuda_on_a_cpu_machine_fails_in_one_line(capsys):
    assert qft_main(["--device", "cuda", "plan"]) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("qft plan: key 'model.device' is cuda but no CUDA GPU is visible")
    assert "\n" not in error


def test_auto_dtype_keeps_a_16_bit_checkpoint_16_bit_on_the_cpu(tmp_path: Path):
    # A 4B model is 8 GB in bfloat16 and 16 GB in float32: no CPU stage widens it.
    (tmp_path / "config.json").write_text('{"dtype": "bfloat16"}', encoding="utf-8")
    assert torch_dtype("auto", "cpu", tmp_path) == torch.bfloat16
    (tmp_path / "config.json").write_text('{"torch_dtype": "float32"}', encoding="utf-8")
    assert torch_dtype("auto", "cpu", tmp_path) == torch.float32
    assert torch_dtype("auto", "cpu") == torch.float32
    assert torch_dtype("float32", "cpu", tmp_path) == torch.float32
