"""The vLLM command line that serves a deployment package on GPUs behind the same OpenAI API as `qft serve`."""

from __future__ import annotations

from pathlib import Path

from qft_core.package.layout import PackageError, package_quantization, read_package_metadata

# Qwen3-Thinking-2507's prompt already opens <think>, so replies carry only </think>: the parser that
# Qwen documents for these models (deepseek_r1) splits exactly that shape into reasoning and answer.
REASONING_PARSER = "deepseek_r1"
# Quantization formats that vLLM loads from a package's config.json; the others are for `qft serve` only.
VLLM_QUANTIZATIONS = frozenset({"gptq"})


def vllm_command(
    package_dir: Path,
    *,
    served_model_name: str | None = None,
    max_model_len: int = 32_768,
    host: str = "127.0.0.1",
    port: int = 8000,
    tensor_parallel_size: int = 1,
    gpu_memory_utilization: float = 0.9,
) -> list[str]:
    """`vllm serve` arguments for an unpacked package: safetensors only, the package's generation config as
    sampling defaults, reasoning split into `reasoning_content`, the package name as the model id.

    The API key is not an argument (command lines are visible to every user of the machine): vLLM reads it from
    the VLLM_API_KEY environment variable. Packages quantized in a format vLLM cannot load are refused.
    """
    package_dir = Path(package_dir)
    metadata = read_package_metadata(package_dir)
    quantization = package_quantization(metadata)
    if quantization is not None and quantization not in VLLM_QUANTIZATIONS:
        raise PackageError(
            f"{package_dir}: {quantization} weights load only in `qft serve`; vLLM serves the full-precision "
            f"package or a {'/'.join(sorted(VLLM_QUANTIZATIONS))} one"
        )
    return [
        "vllm",
        "serve",
        str(package_dir),
        "--served-model-name",
        served_model_name or str(metadata.get("package_name") or package_dir.name),
        "--reasoning-parser",
        REASONING_PARSER,
        "--max-model-len",
        str(max_model_len),
        "--host",
        host,
        "--port",
        str(port),
        "--tensor-parallel-size",
        str(tensor_parallel_size),
        "--gpu-memory-utilization",
        str(gpu_memory_utilization),
        "--load-format",
        "safetensors",
        "--generation-config",
        "auto",
    ]
