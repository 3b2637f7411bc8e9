"""Quantized packages: safetensors only, reloaded identically from disk, close to float32 where the format
promises it, and refused cleanly where this machine cannot produce a format."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from qft_core.config import ModelConfig, PathsConfig, QuantConfig
from qft_core.model.chat import generation_prompt_ids
from qft_core.model.registry import ensure_model_dir, resolve_model
from qft_core.model.tokenizer import qwen3_thinking_chat_template
from qft_core.package import quantize as quantize_module
from qft_core.package.quantize import (
    GPTQ_KERNEL_ENV,
    PICKLE_SUFFIXES,
    QUANT_METADATA_FILE,
    FormatUnavailableError,
    QuantizationError,
    QuantizedPackage,
    QuantSettingsError,
    load_quantized,
    quantize,
)
from qft_core.package.compare import score_texts

CONFIG = QuantConfig(calibration_samples=8, calibration_max_tokens=64)
PERPLEXITY_TEXTS = (
    (
        "<|im_start|>user\nSM4 的分组长度是多少？<|im_end|>\n<|im_start|>assistant\n<think>\nSM4 是分组密码。\n"
        "</think>\n\nSM4 的分组长度和密钥长度都是 128 位。<|im_end|>\n"
    ),
    (
        "<|im_start|>user\n什么是数字签名？<|im_end|>\n<|im_start|>assistant\n<think>\n签名用私钥生成。\n</think>\n\n"
        "数字签名用签名者的私钥生成，任何人都可以用其公钥验证。<|im_end|>\n"
    ),
)


@pytest.fixture(scope="module")
def source_dir() -> Path:
    """qwen3-tiny stands in for a merged model: quantization only needs a model directory."""
    return ensure_model_dir(resolve_model(ModelConfig(name="qwen3-tiny"), PathsConfig()))


@pytest.fixture(scope="module")
def packages(source_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, QuantizedPackage]:
    root = tmp_path_factory.mktemp("quantized")
    return {fmt: quantize(source_dir, fmt, root / fmt, CONFIG) for fmt in ("int8", "int4")}


@pytest.fixture(scope="module")
def tokenizer(source_dir: Path):
    return AutoTokenizer.from_pretrained(source_dir)


@torch.no_grad()
def prompt_logits(model: torch.nn.Module, tokenizer) -> torch.Tensor:
    ids = torch.tensor([generation_prompt_ids("什么是椭圆曲线密码？", tokenizer)])
    return model(input_ids=ids).logits[0]


def weight_files_are_safetensors_only(directory: Path) -> None:
    files = [path for path in directory.rglob("*") if path.is_file()]
    assert not [path.name for path in files if path.suffix in PICKLE_SUFFIXES]
    assert [path.name for path in files if path.suffix == ".safetensors"] == ["model.safetensors"]


@pytest.mark.parametrize(
    ("fmt", "method", "library", "bits"),
    [("int8", "torchao-int8-weight-only", "torchao", 8), ("int4", "quanto-qint4-weight-only", "optimum-quanto", 4)],
)
def test_package_is_safetensors_with_metadata_tokenizer_and_generation_config(
    packages, source_dir, fmt, method, library, bits
):
    package = packages[fmt]
    weight_files_are_safetensors_only(package.directory)
    metadata = json.loads((package.directory / QUANT_METADATA_FILE).read_text(encoding="utf-8"))
    assert (metadata["format"], metadata["method"], metadata["bits"]) == (fmt, method, bits)
    assert set(metadata["versions"]) == {"torch", "transformers", library}
    assert metadata["modules_in_full_precision"] == ["lm_head"]
    assert QuantizedPackage.read(package.directory) == package
    assert AutoTokenizer.from_pretrained(package.directory).chat_template == qwen3_thinking_chat_template()
    generation_config = (package.directory / "generation_config.json").read_bytes()
    assert generation_config == (source_dir / "generation_config.json").read_bytes()
    assert not list(package.directory.parent.glob(".*"))  # no staging directory left behind


@pytest.mark.parametrize("fmt", ["int8", "int4"])
def test_reloading_a_package_twice_gives_identical_logits(packages, tokenizer, fmt):
    directory = packages[fmt].directory
    first = prompt_logits(load_quantized(directory), tokenizer)
    second = prompt_logits(load_quantized(directory), tokenizer)
    assert torch.isfinite(first).all()
    assert torch.equal(first, second)


def test_reloaded_linear_layers_are_quantized_and_lm_head_is_not(packages):
    from optimum.quanto import QLinear, qint4
    from torchao.quantization import Int8Tensor

    int8 = load_quantized(packages["int8"].directory)
    assert isinstance(int8.model.layers[0].mlp.down_proj.weight, Int8Tensor)
    assert int8.lm_head.weight.dtype == torch.float32 and not isinstance(int8.lm_head.weight, Int8Tensor)
    int4 = load_quantized(packages["int4"].directory)
    down_proj = int4.model.layers[0].mlp.down_proj
    assert isinstance(down_proj, QLinear) and down_proj.weight_qtype == qint4
    assert not isinstance(int4.lm_head, QLinear)


def test_int8_perplexity_stays_within_one_percent_of_float32(packages, source_dir, tokenizer):
    float32 = AutoModelForCausalLM.from_pretrained(source_dir, dtype=torch.float32).eval()
    reference = score_texts(float32, tokenizer, PERPLEXITY_TEXTS, max_tokens=128).perplexity
    int8 = score_texts(load_quantized(packages["int8"].directory), tokenizer, PERPLEXITY_TEXTS, max_tokens=128)
    assert abs(int8.perplexity / reference - 1) < 0.01


def test_an_unknown_format_is_unavailable_and_writes_nothing(source_dir, tmp_path):
    with pytest.raises(FormatUnavailableError, match="unknown quantization format 'fp8'; qft knows int8, int4, gptq"):
        quantize(source_dir, "fp8", tmp_path / "fp8", CONFIG)
    assert list(tmp_path.iterdir()) == []


def test_a_format_whose_library_is_missing_is_unavailable(source_dir, tmp_path, monkeypatch):
    real_find_spec = quantize_module.find_spec
    monkeypatch.setattr(
        quantize_module, "find_spec", lambda name: None if name.startswith("optimum") else real_find_spec(name)
    )
    with pytest.raises(FormatUnavailableError, match="int4: needs the Python package optimum-quanto"):
        quantize(source_dir, "int4", tmp_path / "int4", CONFIG)
    assert list(tmp_path.iterdir()) == []


def test_gptq_needs_calibration_text(source_dir, tmp_path):
    with pytest.raises(QuantSettingsError, match="gptq needs calibration_texts"):
        quantize(source_dir, "gptq", tmp_path / "gptq", CONFIG, calibration_texts=[])
    assert list(tmp_path.iterdir()) == []


def test_gptq_group_size_must_divide_every_layer_width(source_dir, tmp_path):
    config = CONFIG.model_copy(update={"gptq_group_size": 96})
    with pytest.raises(
        QuantSettingsError, match=r"quant.gptq_group_size 96 .*q/k/v/gate/up_proj 128, o_proj 128, down_proj 384"
    ):
        quantize(source_dir, "gptq", tmp_path / "gptq", config, calibration_texts=list(PERPLEXITY_TEXTS))


def test_a_directory_without_quantization_metadata_is_refused(source_dir):
    with pytest.raises(QuantizationError, match=f"{QUANT_METADATA_FILE}: missing"):
        load_quantized(source_dir)


def test_a_package_holding_a_pickle_is_refused(packages, tmp_path):
    copy = Path(shutil.copytree(packages["int8"].directory, tmp_path / "int8"))
    (copy / "extra_state.pt").write_bytes(b"pickle")
    with pytest.raises(QuantizationError, match="pickled files extra_state.pt"):
        load_quantized(copy)


@pytest.mark.slow
def test_gptq_package_reloads_identically_and_records_its_settings(source_dir, tokenizer, tmp_path, monkeypatch):
    package = quantize(source_dir, "gptq", tmp_path / "gptq", CONFIG, calibration_texts=list(PERPLEXITY_TEXTS) * 4)
    weight_files_are_safetensors_only(package.directory)
    assert (package.format, package.bits, package.group_size, package.calibration_samples) == ("gptq", 4, 64, 8)
    settings = json.loads((package.directory / "config.json").read_text(encoding="utf-8"))["quantization_config"]
    assert (settings["quant_method"], settings["bits"], settings["group_size"]) == ("gptq", 4, 64)
    assert "dataset" not in settings  # calibration text stays out of the package
    first = prompt_logits(load_quantized(package.directory), tokenizer)
    second = prompt_logits(load_quantized(package.directory), tokenizer)
    assert torch.isfinite(first).all() and torch.equal(first, second)

    # The kernel is the loader's choice: an argument, else $QFT_GPTQ_KERNEL.
    chosen = load_quantized(package.directory, gptq_kernel="gptq_torch")
    assert type(chosen.model.layers[0].self_attn.q_proj).__name__ == "TorchLinear"
    monkeypatch.setenv(GPTQ_KERNEL_ENV, "gptq_torch")
    from_env = load_quantized(package.directory)
    assert type(from_env.model.layers[0].mlp.down_proj).__name__ == "TorchLinear"
    assert torch.equal(prompt_logits(from_env, tokenizer), prompt_logits(chosen, tokenizer))
    # The CPU default (the fused kernel) multiplies in bfloat16, gptq_torch dequantizes to float32.
    torch.testing.assert_close(prompt_logits(chosen, tokenizer), first, rtol=0, atol=0.02)
    monkeypatch.setenv(GPTQ_KERNEL_ENV, "fastest_please")
    with pytest.raises(QuantSettingsError, match="quant.gptq_kernel 'fastest_please' is not a gptqmodel GPTQ kernel"):
        load_quantized(package.directory)


@pytest.mark.slow
def test_gptq_on_a_cpu_compiles_nothing_by_default(source_dir, tokenizer, tmp_path, monkeypatch):
    # gptqmodel's own CPU choices (its AVX-512 kernel, its C++ packer) are compiled on first use: minutes.
    extensions = tmp_path / "extensions"
    monkeypatch.setenv("GPTQMODEL_TORCH_EXTENSIONS_DIR", str(extensions))
    package = quantize(source_dir, "gptq", tmp_path / "gptq", CONFIG, calibration_texts=list(PERPLEXITY_TEXTS) * 4)
    model = load_quantized(package.directory)
    assert type(model.model.layers[0].mlp.down_proj).__name__ == "TorchFusedLinear"
    assert torch.isfinite(prompt_logits(model, tokenizer)).all()
    assert not extensions.exists()


def test_an_unknown_gptq_kernel_is_refused_before_anything_is_written(source_dir, tmp_path):
    settings = CONFIG.model_copy(update={"gptq_kernel": "warp_drive"})
    with pytest.raises(QuantSettingsError, match="quant.gptq_kernel 'warp_drive'.*gptq_triton"):
        quantize(source_dir, "gptq", tmp_path / "gptq", settings, calibration_texts=list(PERPLEXITY_TEXTS))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_gptq_without_a_kernel_for_the_settings_is_unavailable(source_dir, tmp_path, monkeypatch):
    import gptqmodel.utils.importer

    def no_kernel(**settings):
        raise ValueError("No valid quant linear")

    monkeypatch.setattr(gptqmodel.utils.importer, "select_quant_linear", no_kernel)
    with pytest.raises(
        FormatUnavailableError, match=r"gptq: no GPTQ kernel \(auto\) for 4-bit, group size 64.*No valid quant linear"
    ):
        quantize(source_dir, "gptq", tmp_path / "gptq", CONFIG, calibration_texts=list(PERPLEXITY_TEXTS))
    assert list(tmp_path.iterdir()) == []
