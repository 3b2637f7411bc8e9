"""Weight-only quantized copies of a merged model (int8, int4, GPTQ 4-bit), saved as safetensors beside a metadata
file that says how to load them back; every package is reloaded from disk and checked before it is kept.

Which library writes which format, and why, is in docs/quantization.md.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib import metadata as distributions
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPTQConfig, PreTrainedModel

from qft_core.config import QuantConfig
from qft_core.model.chat import generation_prompt_ids
from qft_core.model.registry import has_weights, torch_dtype
from qft_core.package.merge import weights_bytes
from qft_core.publish import publishing_folder

QUANT_METADATA_FILE = "qft_quantization.json"
# Bump when the metadata or the way a format is stored changes, so old packages are recognised.
QUANT_METADATA_VERSION = 1
# Pickle-based checkpoints can run code when loaded; packages hold safetensors only.
PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"})
# The output projection shares its weight with the embedding (Qwen3 ties them); it stays in full precision, as
# the released quantized Qwen3 checkpoints keep it, because it shapes every logit.
FULL_PRECISION_MODULES = ("lm_head",)
# quanto groups int4 weights by 128 input features (fewer where 128 does not divide the layer; per output
# channel where a layer has at most 128 inputs).
QUANTO_GROUP_SIZE = 128
SOURCE_FILES_KEPT = ("generation_config.json",)
RELOAD_CHECK_QUESTION = "什么是分组密码？"
# Where `qft serve` and other config-less loaders take the GPTQ kernel from (quant.gptq_kernel otherwise).
GPTQ_KERNEL_ENV = "QFT_GPTQ_KERNEL"
# What `auto` means on a CPU. gptqmodel's own choice there is its AVX-512 kernel, a C++ extension compiled on
# first use (617 s once on two busy cores); the fused kernel runs on torch's built-in int4 matmul, with nothing
# to compile.
CPU_GPTQ_KERNEL = "gptq_torch_fused"


class FormatUnavailableError(RuntimeError):
    """A quantization format this machine cannot produce or load (unknown, library or kernels missing)."""


class QuantizationError(RuntimeError):
    """A quantized package that fails its checks: pickled files, unreadable metadata, non-finite logits."""


class QuantSettingsError(ValueError):
    """Quantization settings that do not fit the model or the data; the message names the config key."""


@dataclass(frozen=True)
class QuantizedPackage:
    """A quantized model directory and what its metadata file records."""

    directory: Path
    format: str
    method: str
    bits: int
    group_size: int | None
    modules_in_full_precision: tuple[str, ...]
    calibration_samples: int
    source: str
    versions: dict[str, str]
    created: str
    seconds: float

    @property
    def weights_bytes(self) -> int:
        return weights_bytes(self.directory)

    def metadata(self) -> dict[str, Any]:
        """The metadata file's content (also what a deployment package records under `quantization`)."""
        values = asdict(self)
        del values["directory"]
        values["modules_in_full_precision"] = list(self.modules_in_full_precision)
        return {"qft_quantization_version": QUANT_METADATA_VERSION, **values}

    @classmethod
    def read(cls, directory: Path) -> QuantizedPackage:
        """The package in `directory`, from its metadata file."""
        directory = Path(directory)
        path = directory / QUANT_METADATA_FILE
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise QuantizationError(f"{path}: missing; {directory} is not a qft quantized package") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise QuantizationError(f"{path}: cannot read the quantization metadata: {error}") from None
        version = values.pop("qft_quantization_version", None)
        if version != QUANT_METADATA_VERSION:
            raise QuantizationError(
                f"{path}: qft_quantization_version {version!r}; this qft reads version {QUANT_METADATA_VERSION}"
            )
        try:
            values["modules_in_full_precision"] = tuple(values["modules_in_full_precision"])
            return cls(directory=directory, **values)
        except (KeyError, TypeError) as error:
            raise QuantizationError(f"{path}: malformed quantization metadata: {error}") from None


Writer = Callable[[Path, Path, QuantConfig, Sequence[str] | None, str], int]
# (package directory, device, gptq kernel): int8 and int4 have one kernel each and ignore the third.
Loader = Callable[[Path, str, str], PreTrainedModel]


@dataclass(frozen=True)
class QuantMethod:
    """How one format is produced and loaded: the library (a Python distribution) that does it, a writer that
    saves the quantized weights of a source model directory into a target directory and returns the
    calibration sample count, and a loader."""

    format: str
    method: str
    library: str
    module: str
    bits: Callable[[QuantConfig], int]
    group_size: Callable[[QuantConfig], int | None]
    write: Writer
    load: Loader


def _from_pretrained(directory: Path, device: str, **kwargs: Any) -> PreTrainedModel:
    return AutoModelForCausalLM.from_pretrained(
        directory, use_safetensors=True, local_files_only=True, trust_remote_code=False, device_map=device, **kwargs
    )


def _write_torchao_int8(
    source: Path, target: Path, config: QuantConfig, texts: Sequence[str] | None, device: str
) -> int:
    from torchao.quantization import Int8WeightOnlyConfig
    from transformers import TorchAoConfig

    # Embeddings and lm_head stay unquantized: TorchAoConfig leaves them alone unless told otherwise.
    quantization = TorchAoConfig(Int8WeightOnlyConfig())
    _from_pretrained(source, device, dtype="auto", quantization_config=quantization).save_pretrained(target)
    return 0


def _load_torchao(directory: Path, device: str, gptq_kernel: str) -> PreTrainedModel:
    return _from_pretrained(directory, device, dtype="auto")


def _write_quanto_int4(
    source: Path, target: Path, config: QuantConfig, texts: Sequence[str] | None, device: str
) -> int:
    from optimum.quanto import QuantizedModelForCausalLM, qint4

    model = _from_pretrained(source, device, dtype="auto")
    quantized = QuantizedModelForCausalLM.quantize(model, weights=qint4, exclude=list(FULL_PRECISION_MODULES))
    # Weights go to model.safetensors, the per-module qtypes to quanto_qmap.json (what `requantize` reads).
    quantized.save_pretrained(target)
    # quanto writes a generic hub model card; the deployment package writes its own.
    (target / "README.md").unlink(missing_ok=True)
    return 0


def _load_quanto(directory: Path, device: str, gptq_kernel: str) -> PreTrainedModel:
    from optimum.quanto import QuantizedModelForCausalLM

    return QuantizedModelForCausalLM.from_pretrained(directory)._wrapped.to(device)


def _linear_in_features(model_config: dict[str, Any]) -> dict[str, int]:
    """Input widths of a decoder layer's linear projections (what a GPTQ group must divide)."""
    hidden = model_config["hidden_size"]
    head_dim = model_config.get("head_dim") or hidden // model_config["num_attention_heads"]
    return {
        "q/k/v/gate/up_proj": hidden,
        "o_proj": model_config["num_attention_heads"] * head_dim,
        "down_proj": model_config["intermediate_size"],
    }


def check_gptq_group_size(source: Path, group_size: int) -> None:
    """GPTQ kernels need each linear layer's input width to be a multiple of the group size (-1: one group)."""
    if group_size == -1:
        return
    widths = _linear_in_features(json.loads((source / "config.json").read_text(encoding="utf-8")))
    if group_size <= 0 or any(width % group_size for width in widths.values()):
        widths_text = ", ".join(f"{name} {width}" for name, width in widths.items())
        raise QuantSettingsError(
            f"quant.gptq_group_size {group_size} does not divide the input width of every linear layer of "
            f"{source} ({widths_text}); choose a divisor of all of them, or -1"
        )


def _gptq_backend(kernel: str, device: str) -> Any:
    from gptqmodel.utils.backend import BACKEND

    if kernel.lower() == "auto" and device == "cpu":
        kernel = CPU_GPTQ_KERNEL
    try:
        return BACKEND(kernel.lower())
    except ValueError:
        known = ", ".join(backend.value for backend in BACKEND if backend.value.startswith(("auto", "gptq_")))
        raise QuantSettingsError(f"quant.gptq_kernel '{kernel}' is not a gptqmodel GPTQ kernel; one of: {known}") from None


def _check_gptq_kernel(config: QuantConfig, device: str, dtype: torch.dtype) -> None:
    from gptqmodel.utils.importer import select_quant_linear

    backend = _gptq_backend(config.gptq_kernel, device)
    try:
        select_quant_linear(
            backend=backend,
            bits=config.gptq_bits,
            group_size=config.gptq_group_size,
            desc_act=False,
            sym=True,
            device=device,
            pack_dtype=torch.int32,
            dtype=dtype,
        )
    except (ValueError, NotImplementedError) as error:
        raise FormatUnavailableError(
            f"gptq: no GPTQ kernel ({config.gptq_kernel}) for {config.gptq_bits}-bit, group size "
            f"{config.gptq_group_size}, {dtype} on {device}: {error}"
        ) from None


def _calibration_batches(source: Path, texts: Sequence[str] | None, config: QuantConfig) -> list[dict[str, list[int]]]:
    """The first `calibration_samples` texts as token ids, each cut to `calibration_max_tokens`."""
    if not texts:
        raise QuantSettingsError("gptq needs calibration_texts (training-split text); none were given")
    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True, trust_remote_code=False)
    batches = []
    for text in texts[: config.calibration_samples]:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][: config.calibration_max_tokens]
        batches.append({"input_ids": ids, "attention_mask": [1] * len(ids)})
    return batches


def _write_gptq(source: Path, target: Path, config: QuantConfig, texts: Sequence[str] | None, device: str) -> int:
    check_gptq_group_size(source, config.gptq_group_size)
    calibration = _calibration_batches(source, texts, config)
    # float32 on CPU (bfloat16 matmuls there are slow and lose precision in the Hessian); bf16/fp16 on GPUs.
    dtype = torch_dtype("auto", device)
    # gptqmodel's model loader asks its CPU pool for two workers, and the pool's default size (half the cores)
    # is one on a two-core machine; an explicit GPTQMODEL_CPU_WORKERS wins.
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(max(2, (os.cpu_count() or 1) // 2)))
    if device == "cpu":
        # gptqmodel packs the quantized weights with a C++ extension it compiles on first use (minutes); with its
        # Python packer, qwen3-tiny's whole GPTQ run took 15 CPU-s. An explicit GPTQMODEL_DISABLE_PACK_EXT=0 wins.
        os.environ.setdefault("GPTQMODEL_DISABLE_PACK_EXT", "1")
    _check_gptq_kernel(config, device, dtype)
    from gptqmodel import GPTQModel, QuantizeConfig

    settings = QuantizeConfig(bits=config.gptq_bits, group_size=config.gptq_group_size, desc_act=False, sym=True)
    backend = _gptq_backend(config.gptq_kernel, device)
    model = GPTQModel.load(str(source), settings, device=device, dtype=dtype, backend=backend)
    # gptqmodel drops calibration rows shorter than its minimum; 1 keeps every text we chose.
    model.quantize(calibration, calibration_data_min_length=1)
    # Saved in the `gptq` checkpoint format (quantization_config in config.json), which vLLM and transformers load.
    model.save(str(target))
    return len(calibration)


def _load_gptq(directory: Path, device: str, gptq_kernel: str) -> PreTrainedModel:
    # Never the in-memory model that quantized: it can give NaN logits until its weights are reloaded packed.
    # The kernel is a loading attribute: transformers merges it into the package's stored quantization config.
    stored = json.loads((directory / "config.json").read_text(encoding="utf-8"))["quantization_config"]
    kernel = GPTQConfig(bits=stored["bits"], backend=_gptq_backend(gptq_kernel, device).value)
    return _from_pretrained(directory, device, dtype=torch_dtype("auto", device), quantization_config=kernel)


METHODS: dict[str, QuantMethod] = {
    "int8": QuantMethod(
        format="int8",
        method="torchao-int8-weight-only",
        library="torchao",
        module="torchao",
        bits=lambda config: 8,
        group_size=lambda config: None,
        write=_write_torchao_int8,
        load=_load_torchao,
    ),
    "int4": QuantMethod(
        format="int4",
        method="quanto-qint4-weight-only",
        library="optimum-quanto",
        module="optimum.quanto",
        bits=lambda config: 4,
        group_size=lambda config: QUANTO_GROUP_SIZE,
        write=_write_quanto_int4,
        load=_load_quanto,
    ),
    "gptq": QuantMethod(
        format="gptq",
        method="gptqmodel-gptq",
        library="gptqmodel",
        module="gptqmodel",
        bits=lambda config: config.gptq_bits,
        group_size=lambda config: config.gptq_group_size,
        write=_write_gptq,
        load=_load_gptq,
    ),
}


def quant_method(fmt: str) -> QuantMethod:
    """The method that produces and loads `fmt`, if its library is installed."""
    method = METHODS.get(fmt)
    if method is None:
        raise FormatUnavailableError(f"unknown quantization format '{fmt}'; qft knows {', '.join(METHODS)}")
    if find_spec(method.module.split(".")[0]) is None or find_spec(method.module) is None:
        raise FormatUnavailableError(f"{fmt}: needs the Python package {method.library}, which is not installed here")
    return method


def _versions(library: str) -> dict[str, str]:
    return {name: distributions.version(name) for name in ("torch", "transformers", library)}


def _check_no_pickles(directory: Path) -> None:
    pickles = sorted(path.name for path in directory.rglob("*") if path.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise QuantizationError(f"{directory}: pickled files {', '.join(pickles)}; packages hold safetensors only")


def _keep_source_files(source: Path, target: Path) -> None:
    # The tokenizer (with its chat template) and generation settings are the merged model's, byte for byte:
    # quantization libraries re-save them with their own fixes.
    AutoTokenizer.from_pretrained(source, local_files_only=True, trust_remote_code=False).save_pretrained(target)
    for name in SOURCE_FILES_KEPT:
        if (source / name).is_file():
            shutil.copyfile(source / name, target / name)


@torch.no_grad()
def _check_reloaded(directory: Path, device: str, gptq_kernel: str) -> None:
    model = load_quantized(directory, device=device, gptq_kernel=gptq_kernel)
    tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True, trust_remote_code=False)
    ids = torch.tensor([generation_prompt_ids(RELOAD_CHECK_QUESTION, tokenizer)], device=device)
    logits = model(input_ids=ids).logits
    if not torch.isfinite(logits).all():
        raise QuantizationError(f"{directory}: the reloaded quantized model gives non-finite logits")


def quantize(
    merged_dir: Path,
    fmt: str,
    out_dir: Path,
    config: QuantConfig,
    calibration_texts: Sequence[str] | None = None,
    *,
    device: str = "cpu",
) -> QuantizedPackage:
    """Quantize the merged model in `merged_dir` to `fmt` (int8, int4 or gptq) and write the package to `out_dir`.

    The package holds safetensors weights, config, tokenizer, generation config and `qft_quantization.json`
    (format, method, bits, group size, library versions). It is reloaded from disk and must give finite logits
    before it replaces `out_dir`. GPTQ calibrates on the first `config.calibration_samples` of
    `calibration_texts` (training-split text). Raises `FormatUnavailableError` where this machine cannot
    produce the format; nothing is written then.
    """
    merged_dir, out_dir = Path(merged_dir), Path(out_dir)
    method = quant_method(fmt)
    if not has_weights(merged_dir):
        raise QuantSettingsError(f"{merged_dir}: not a model directory (needs config.json and *.safetensors)")
    started = time.perf_counter()
    with publishing_folder(out_dir) as staging:
        calibration_samples = method.write(merged_dir, staging, config, calibration_texts, device)
        _keep_source_files(merged_dir, staging)
        _check_no_pickles(staging)
        package = QuantizedPackage(
            directory=staging,
            format=method.format,
            method=method.method,
            bits=method.bits(config),
            group_size=method.group_size(config),
            modules_in_full_precision=FULL_PRECISION_MODULES,
            calibration_samples=calibration_samples,
            source=merged_dir.name,
            versions=_versions(method.library),
            created=datetime.now(UTC).isoformat(timespec="seconds"),
            seconds=round(time.perf_counter() - started, 2),
        )
        text = json.dumps(package.metadata(), ensure_ascii=False, indent=2)
        (staging / QUANT_METADATA_FILE).write_text(text + "\n", encoding="utf-8")
        _check_reloaded(staging, device, config.gptq_kernel)
    return QuantizedPackage.read(out_dir)


def load_quantized(package_dir: Path, *, device: str = "cpu", gptq_kernel: str | None = None) -> PreTrainedModel:
    """The quantized model of a package, loaded the way its `qft_quantization.json` says, in eval mode.

    `gptq_kernel` (a gptqmodel backend; default $QFT_GPTQ_KERNEL, else auto) picks the kernel of GPTQ packages:
    the kernel belongs to the machine that loads, not to the package.
    """
    package = QuantizedPackage.read(package_dir)
    _check_no_pickles(package.directory)
    kernel = gptq_kernel or os.environ.get(GPTQ_KERNEL_ENV) or "auto"
    return quant_method(package.format).load(package.directory, device, kernel).eval()
