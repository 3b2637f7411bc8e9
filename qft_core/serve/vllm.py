"""The vLLM and SGLang command lines that serve a deployment package on GPUs behind the same OpenAI API as
`qft serve`."""

from __future__ import annotations

from pathlib import Path

from qft_core.package.layout import PackageError, package_quantization, read_package_metadata

# Qwen3-Thinking-2507's prompt already opens <think>, so replies carry only </think>: the parser that
# Qwen documents for these models (deepseek_r1) splits exactly that shape into reasoning and answer.
REASONING_PARSER = "deepseek_r1"
# SGLang's parser for the Qwen3-Thinking models, which always reason: like deepseek_r1 in vLLM it takes the reply up
# to </think> as reasoning although the prompt, not the reply, opened <think>.
SGLANG_REASONING_PARSER = "qwen3-thinking"
# Quantization formats that vLLM and SGLang load from a package's config.json (its `quantization_config`). The
# others are for `qft serve` only: `int8` is torchao weights and `int4` optimum-quanto weights, which neither
# engine reads from a checkpoint.
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
    return [
        "vllm",
        "serve",
        str(package_dir),
        "--served-model-name",
        served_model_name or _gpu_servable_name(package_dir, "vLLM"),
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


def sglang_command(
    package_dir: Path,
    *,
    served_model_name: str | None = None,
    context_length: int = 32_768,
    host: str = "127.0.0.1",
    port: int = 8000,
    tensor_parallel_size: int = 1,
    mem_fraction_static: float = 0.9,
) -> list[str]:
    """`python -m sglang.launch_server` arguments for an unpacked package, the SGLang twin of `vllm_command`:
    safetensors only, reasoning split into `reasoning_content` by SGLang's Qwen3-Thinking parser, the package name
    as the model id, the same context and GPU settings (`mem_fraction_static` is SGLang's share of GPU memory for
    weights and KV cache, where vLLM's `gpu_memory_utilization` counts everything).

    SGLang takes an API key only as `--api-key`, visible in the process list: none is set here; keep the server
    on 127.0.0.1 or behind a proxy that checks keys. Packages quantized in a format SGLang cannot load are refused.
    """
    package_dir = Path(package_dir)
    return [
        "python",
        "-m",
        "sglang.launch_server",
        "--model-path",
        str(package_dir),
        "--served-model-name",
        served_model_name or _gpu_servable_name(package_dir, "SGLang"),
        "--reasoning-parser",
        SGLANG_REASONING_PARSER,
        "--context-length",
        str(context_length),
        "--host",
        host,
        "--port",
        str(port),
        "--tp-size",
        str(tensor_parallel_size),
        "--mem-fraction-static",
        str(mem_fraction_static),
        "--load-format",
        "safetensors",
    ]


def gpu_serving_lines(package_name: str, quantization: str | None) -> list[str]:
    """The shell lines a model card shows for serving the package on GPUs: the vLLM and SGLang commands, or why a
    quantization format has none."""
    if quantization is not None and quantization not in VLLM_QUANTIZATIONS:
        return [f"# {quantization} weights load only in `qft serve`, not in vLLM or SGLang"]
    return [
        f"vllm serve {package_name} --served-model-name {package_name} --reasoning-parser {REASONING_PARSER}",
        f"python -m sglang.launch_server --model-path {package_name} --served-model-name {package_name} "
        f"--reasoning-parser {SGLANG_REASONING_PARSER}",
    ]


def _gpu_servable_name(package_dir: Path, engine: str) -> str:
    """The package's name, once its weights are known to be in a format the GPU engines load."""
    metadata = read_package_metadata(package_dir)
    quantization = package_quantization(metadata)
    if quantization is not None and quantization not in VLLM_QUANTIZATIONS:
        raise PackageError(
            f"{package_dir}: {quantization} weights load only in `qft serve`; {engine} serves the full-precision "
            f"package or a {'/'.join(sorted(VLLM_QUANTIZATIONS))} one"
        )
    return str(metadata.get("package_name") or package_dir.name)
