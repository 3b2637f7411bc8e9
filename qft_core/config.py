"""The one typed configuration of the whole pipeline, loaded from YAML with laptop-CPU defaults."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

REPO_ROOT = Path(__file__).resolve().parent.parent


class ConfigError(ValueError):
    """A configuration file or override that does not validate; the message names file and key."""


class Section(BaseModel):
    # No section has a use for an infinite or NaN number (`epochs: .inf` would train for ever).
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class PathsConfig(Section):
    """Where inputs live and where artifacts go; relative paths resolve against the project root."""

    corpus_dir: str = "data/corpus"
    term_dictionary: str = "data/crypto_terms.yaml"
    misconceptions: str = "data/misconceptions.yaml"
    fact_base: str = "data/crypto_facts.yaml"
    artifacts_dir: str = "artifacts"
    model_cache_dir: str = ".cache/qft/models"
    # Where `qft serve ARCHIVE` unpacks a package archive, one folder per archive content (sha256), reused.
    package_cache_dir: str = ".cache/qft/packages"

    def resolve(self, value: str) -> Path:
        path = Path(value).expanduser()
        return path if path.is_absolute() else REPO_ROOT / path


class DataConfig(Section):
    max_thinking_depth: int = Field(16, ge=1, le=64)
    generate_missing_thinking: bool = True
    max_quarantine_ratio: float = Field(0.2, ge=0.0, le=1.0)
    max_file_bytes: int = Field(50_000_000, ge=1)


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class ReasoningConfig(Section):
    """Who writes the reasoning of pairs that have none, when data.generate_missing_thinking is on: the template
    generator, the model being fine-tuned, or an OpenAI-compatible endpoint. A model's reasoning is kept only when
    it passes the quality and answer-consistency checks (docs/data-format.md); the rest get the template's."""

    # template: built from question and answer (no model; the embedded default, whose random model writes noise);
    # model: the model of `model.name`, before fine-tuning; endpoint: `endpoint_model` at `endpoint_url`.
    writer: Literal["template", "model", "endpoint"] = "template"
    # Base URL of an OpenAI-compatible API, as OpenAI clients take it (`https://host/v1`); requests go to
    # `<endpoint_url>/chat/completions`.
    endpoint_url: str | None = None
    # The model name sent in each request.
    endpoint_model: str | None = None
    # Name of the environment variable holding the endpoint's API key (sent as a Bearer token); empty: no key.
    api_key_env: str | None = None
    # Seconds one request may take before it counts as failed.
    timeout_s: float = Field(120.0, gt=0)
    # Requests to the endpoint in flight at once.
    concurrency: int = Field(4, ge=1)
    # Tokens of a whole reply; with the `model` writer, its own thinking and then the reasoning it writes.
    max_new_tokens: int = Field(2048, ge=16)
    # `model` writer: tokens it may think before `</think>` is forced in and it writes the reasoning asked for.
    thinking_budget: int = Field(1024, ge=0)
    # Prompts the `model` writer generates for at once.
    batch_size: int = Field(8, ge=1)
    # 0 decodes greedily.
    temperature: float = Field(0.0, ge=0.0)
    # Lowest quality score (score_thinking) a written reasoning needs; expert traces of the bundled corpus score
    # 0.70 at their 1st percentile, 0.89 at the median.
    min_quality: float = Field(0.7, ge=0.0, le=1.0)
    # Lowest share of a written reasoning's characters outside runs copied from the answer: below it the
    # reasoning only restates the answer. Expert traces: 0.55 at their 1st percentile, 0.86 at the median.
    min_new_share: float = Field(0.5, ge=0.0, le=1.0)

    @field_validator("endpoint_url")
    @classmethod
    def _base_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"'{value}' is not an http(s) URL with a host (e.g. https://api.example.com/v1)")
        if parts.path.rstrip("/").endswith("/chat/completions"):
            raise ValueError(f"'{value}' is the chat completions path; give the base URL (…/v1) that precedes it")
        if parts.query or parts.fragment:
            raise ValueError(f"'{value}' has a query or fragment; give the API's base URL only")
        return value.rstrip("/")

    @field_validator("api_key_env")
    @classmethod
    def _environment_name(cls, value: str | None) -> str | None:
        if value is not None and not _ENV_NAME.fullmatch(value):
            raise ValueError(
                "must be the NAME of an environment variable (letters, digits, _) that holds the key, "
                "not the key itself"
            )
        return value

    @model_validator(mode="after")
    def _writer_is_complete(self) -> ReasoningConfig:
        if self.writer == "endpoint":
            missing = [key for key in ("endpoint_url", "endpoint_model") if not getattr(self, key)]
            if missing:
                keys = " and ".join(f"reasoning.{key}" for key in missing)
                verb = "is" if len(missing) == 1 else "are"
                raise ValueError(f"reasoning.writer is 'endpoint' but {keys} {verb} empty: name the API and its model")
        if self.thinking_budget >= self.max_new_tokens:
            raise ValueError(
                f"reasoning.thinking_budget ({self.thinking_budget}) must be smaller than reasoning.max_new_tokens "
                f"({self.max_new_tokens}): the reasoning is written after the thinking"
            )
        return self


class SplitConfig(Section):
    train: float = Field(0.8, gt=0.0, lt=1.0)
    validation: float = Field(0.1, ge=0.0, lt=1.0)
    test: float = Field(0.1, gt=0.0, lt=1.0)
    seed: int = 42
    near_duplicate_threshold: float = Field(0.7, gt=0.0, le=1.0)
    ngram: int = Field(3, ge=1, le=8)
    min_split_size: int = Field(10, ge=1)

    @model_validator(mode="after")
    def _ratios_sum_to_one(self) -> SplitConfig:
        total = self.train + self.validation + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + validation + test must be 1.0, got {total:.4f}")
        return self


class ModelConfig(Section):
    """Which model to fine-tune: a registered name (qwen3-tiny, qwen3-4b-thinking-2507, smollm2-135m) or a
    local Hugging Face directory; `path` points a registered name at local weights."""

    name: str = "qwen3-tiny"
    path: str | None = None
    trust_remote_code: bool = False
    max_length: int = Field(1024, ge=16)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    # Where every stage that holds the model computes (training, evaluation, merge, quantization and its checks,
    # package verification, serving): auto is CUDA when torch sees a GPU, else the CPU.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Seed of the random initialisation of built models (qwen3-tiny): same seed, same weights.
    init_seed: int = 0
    # Fetch a registered hub model into the model cache when no local copy exists (needs huggingface.co).
    allow_download: bool = False


class LoraConfig(Section):
    r: int = Field(8, ge=1)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )


class TrainingConfig(Section):
    nproc: int = Field(1, ge=1)
    nnodes: int = Field(1, ge=1)
    master_addr: str = "127.0.0.1"
    master_port: int = Field(29511, ge=1, le=65535)
    # Passes over the training split (fractions allowed). The default, a quarter, is 17 steps of qwen3-tiny on the
    # bundled corpus, whose output layer over the whole Qwen3 vocabulary makes a step cost about 9 CPU-s; the
    # recipes for real models set their own.
    epochs: float = Field(0.25, gt=0)
    max_steps: int | None = Field(None, ge=1)
    global_batch_size: int = Field(8, ge=1)
    micro_batch_size: int | None = Field(None, ge=1)
    learning_rate: float = Field(2e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    max_grad_norm: float = Field(1.0, gt=0)
    gradient_checkpointing: bool | None = None
    sharding: Literal["auto", "ddp", "fsdp"] = "auto"
    packing: bool = True
    loss_chunk_tokens: int | None = Field(1024, ge=1)
    loss_on_reasoning: bool = True
    mask_empty_thinking: bool = True
    checkpoint_every: int = Field(10, ge=1)
    keep_last: int = Field(2, ge=1)
    eval_every: int = Field(10, ge=1)
    max_restarts: int = Field(1, ge=0)
    # Who starts torchrun on every node: `local` on this machine only (one node), `slurm` with srun on the nodes of
    # a Slurm allocation, `kubernetes` on one pod per node through Dagster Pipes (sections `slurm`, `kubernetes`).
    launcher: Literal["local", "slurm", "kubernetes"] = "local"
    # A folder every node mounts at the same path (NFS, Lustre, a shared volume): with the slurm or kubernetes
    # launcher the run folder (paths.artifacts_dir) and the model folder must lie inside it.
    shared_dir: str | None = None
    seed: int = 1234
    anomaly_spike_factor: float = Field(10.0, gt=1)
    max_consecutive_anomalies: int = Field(5, ge=1)


class EvalConfig(Section):
    # Tokens of a whole completion (reasoning, `</think>`, answer).
    max_new_tokens: int = Field(128, ge=1)
    # Tokens of reasoning before `</think>` is forced in and the model goes on to the answer; smaller than
    # max_new_tokens, since the reasoning is a share of the completion.
    thinking_budget: int = Field(96, ge=0)
    batch_size: int = Field(8, ge=1)
    # 0 decodes greedily; above 0 samples with this temperature, nucleus top_p and top_k, seeded by sampling_seed.
    # Empty (null) takes the model folder's generation_config.json value (Qwen3-Thinking-2507: 0.6, 0.95, 20),
    # greedy where the model does not sample.
    temperature: float | None = Field(0.0, ge=0.0)
    # Nucleus sampling share; empty: the model's generation config, else 1 (off).
    top_p: float | None = Field(1.0, gt=0.0, le=1.0)
    # Sample among this many likeliest tokens; empty: the model's generation config, else off.
    top_k: int | None = Field(None, ge=1)
    sampling_seed: int = 0
    # Test questions evaluated, the first of the split; empty: all. Three batches keep a CPU run's evaluation
    # to a few minutes; the recipes for real models evaluate the whole split.
    max_examples: int | None = Field(24, ge=1)
    bootstrap_samples: int = Field(1000, ge=10)
    # Percentile-bootstrap intervals of the metric means: the seed makes a report reproducible.
    bootstrap_seed: int = 0
    confidence_level: float = Field(0.95, gt=0.0, lt=1.0)
    # Processes that score text metrics (forked; 1 scores in the calling process).
    metric_workers: int = Field(2, ge=1)
    regression_tolerance: float = Field(0.02, ge=0)

    @model_validator(mode="after")
    def _budget_leaves_room_for_the_answer(self) -> EvalConfig:
        if self.thinking_budget >= self.max_new_tokens:
            raise ValueError(
                f"thinking_budget ({self.thinking_budget}) must be smaller than max_new_tokens "
                f"({self.max_new_tokens}): the reasoning is a share of the completion, which also needs room "
                "for `</think>` and the answer"
            )
        return self


class QuantConfig(Section):
    """Merge, quantization and the side-by-side verification of each quantized package (docs/quantization.md)."""

    formats: list[Literal["int8", "int4", "gptq"]] = Field(default_factory=lambda: ["int8", "int4", "gptq"])
    # Largest logit difference allowed between the merged model and base + adapter, both in float32.
    merge_tolerance: float = Field(1e-3, gt=0)
    # The same in bfloat16/float16 (a merge on a GPU), where the merged and the unmerged model round differently
    # in every layer: 0.012 on qwen3-tiny.
    merge_tolerance_half: float = Field(0.5, gt=0)
    gptq_bits: int = Field(4, ge=2, le=8)
    gptq_group_size: int = Field(64, ge=-1)
    # gptqmodel kernel that quantizes and loads GPTQ packages (a gptqmodel BACKEND value). auto lets gptqmodel
    # choose; on Hopper GPUs it picks Machete, which downloads CUTLASS on first use, so offline machines set
    # gptq_triton (no build step) or gptq_marlin (compiled from gptqmodel's bundled sources).
    gptq_kernel: str = "auto"
    calibration_samples: int = Field(64, ge=1)
    # Calibration texts are cut to this many tokens.
    calibration_max_tokens: int = Field(512, ge=16)
    # Perplexity of each package is measured on at most this many test-split texts (the recipes for real models:
    # 64 of 512 tokens; each text is scored by the unquantized model and by every package).
    verify_texts: int = Field(16, ge=1)
    # Verification texts are cut to this many tokens.
    verify_max_tokens: int = Field(256, ge=16)
    # Evaluation metrics, latency and tokens/s come from greedy answers to this many test questions (a fixed subset).
    verify_subset: int = Field(8, ge=1)
    # Tokens generated per answer of the verification subset.
    verify_max_new_tokens: int = Field(32, ge=1)
    max_perplexity_increase: float = Field(0.25, ge=0)
    # Blocking check: share of minimal-pair probes where a package must choose what the unquantized model chooses.
    min_probe_agreement: float = Field(0.8, ge=0, le=1)


# The GGUF types qft writes itself (package/gguf.py); K-quants such as Q4_K_M come from llama.cpp's llama-quantize.
GgufType = Literal["f16", "bf16", "q8_0"]


class ExportConfig(Section):
    """The deployment package and how it is served (`qft serve`, and the vLLM command line for GPUs)."""

    package_name: str = "qft-crypto-zh"
    # Which model the deployment package holds: the merged model unquantized (the reference every variant is
    # measured against; loads anywhere without a quantization backend), or one of quant.formats.
    deployed_variant: Literal["unquantized", "int8", "int4", "gptq"] = "unquantized"
    # GGUF files of the merged model for llama.cpp and Ollama, put in the package's gguf/ folder; [] builds none.
    # q8_0 by default: half the size of f16, its logits within about 1 % of the merged model's; each type written is
    # read back with transformers' GGUF loader and compared (docs/serving.md).
    gguf_types: list[GgufType] = Field(default_factory=lambda: ["q8_0"])
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    api_key: str | None = None
    max_request_bytes: int = Field(1_000_000, ge=1)
    max_tokens_limit: int = Field(2048, ge=1)
    # Generations `qft serve` queues behind the one running; past that a request gets 503 with Retry-After.
    max_waiting_generations: int = Field(256, ge=1)
    # Limits on unpacking a package archive (`qft package unpack|verify`, `qft serve ARCHIVE`): far above a real
    # package (a few dozen files; weights barely compress), far below what a hostile archive needs to fill a disk.
    unpack_max_entries: int = Field(10_000, ge=1)
    # The largest single file of an unpacked archive, in bytes (64 GiB: a 32B model's bf16 weights in one file).
    unpack_max_file_bytes: int = Field(64 * 2**30, ge=1)
    # All files of an unpacked archive together, in bytes.
    unpack_max_total_bytes: int = Field(256 * 2**30, ge=1)
    # Unpacked bytes per byte of archive, enforced once more than 16 MiB are unpacked (real packages: about 1–4).
    unpack_max_ratio: float = Field(50.0, gt=1.0)
    vllm_max_model_len: int = Field(32_768, ge=16)
    vllm_tensor_parallel_size: int = Field(1, ge=1)
    vllm_gpu_memory_utilization: float = Field(0.9, gt=0.0, le=1.0)


class SlurmConfig(Section):
    """Where the slurm launcher (training.launcher: slurm) asks for its nodes; empty values are left to Slurm."""

    # The partition (queue) of the nodes (srun --partition).
    partition: str | None = None
    # The account the allocation is charged to (srun --account).
    account: str | None = None
    # Wall-time limit of the allocation, in a form srun reads (`HH:MM:SS`, `D-HH:MM:SS`).
    time: str | None = None
    # Further srun options of the site, passed as they are (`--qos=high`, `--constraint=h100`).
    extra_args: list[str] = Field(default_factory=list)
    # The Python that runs qft on the nodes; empty: this interpreter's path, which every node must then see.
    python: str | None = None


class KubernetesConfig(Section):
    """The pods of the kubernetes launcher (training.launcher: kubernetes), one per node."""

    # Container image holding qft and its environment (the same code as the Dagster deployment).
    image: str | None = None
    # The namespace of the pods and of their headless service.
    namespace: str = "default"
    # CPUs each pod requests and is limited to (a Kubernetes quantity: `16`, `15500m`); GPUs follow the plan.
    cpu: str | None = None
    # Memory each pod requests and is limited to (a Kubernetes quantity: `128Gi`).
    memory: str | None = None
    # The PersistentVolumeClaim mounted at training.shared_dir in every pod (ReadWriteMany).
    volume_claim: str | None = None
    # The Python that runs qft inside the image.
    python: str = "python"


class QftConfig(Section):
    """The whole pipeline's configuration, one section per stage."""

    paths: PathsConfig = Field(default_factory=PathsConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    reasoning: ReasoningConfig = Field(default_factory=ReasoningConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    lora: LoraConfig = Field(default_factory=LoraConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    slurm: SlurmConfig = Field(default_factory=SlurmConfig)
    kubernetes: KubernetesConfig = Field(default_factory=KubernetesConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    quant: QuantConfig = Field(default_factory=QuantConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)

    @model_validator(mode="after")
    def _deployed_variant_is_built(self) -> QftConfig:
        variant = self.export.deployed_variant
        if variant != "unquantized" and variant not in self.quant.formats:
            raise ValueError(
                f"export.deployed_variant '{variant}' is not among quant.formats {self.quant.formats}: the "
                "deployment package can only hold a variant the run quantizes"
            )
        return self


def _format_errors(error: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid configuration"]
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "<root>"
        lines.append(f"  key '{key}': {item['msg']}")
    return "\n".join(lines)


def config_from_dict(values: dict[str, Any], source: str = "<dict>") -> QftConfig:
    try:
        return QftConfig.model_validate(values)
    except ValidationError as error:
        raise ConfigError(_format_errors(error, source)) from None


def load_config(path: str | Path | None = None, *, device: str | None = None) -> QftConfig:
    """Load a YAML config; no path gives the embedded defaults. `device` (the command line's --device) replaces
    the file's `model.device`."""
    if path is None:
        return config_from_dict({} if device is None else {"model": {"device": device}}, "--device")
    path = Path(path)
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as error:
        raise ConfigError(f"{path}: cannot read config: {error.strerror}") from None
    except UnicodeDecodeError as error:
        line = error.object[: error.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 text (byte 0x{error.object[error.start]:02x}); save it as UTF-8") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    if device is not None:
        if not isinstance(values.get("model", {}), dict):
            raise ConfigError(f"{path}: key 'model' must be a mapping")
        values["model"] = {**values.get("model", {}), "device": device}
    return config_from_dict(values, str(path))


def dump_config(config: QftConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), allow_unicode=True, sort_keys=False)
