"""GGUF export of a merged model, for llama.cpp, Ollama and LM Studio: the Qwen3 weights under llama.cpp's tensor
names, the byte-level BPE tokenizer and Qwen3-Thinking-2507's chat template in the metadata, one file per type.

Written with the `gguf` package (llama.cpp's gguf-py): its writer and its numpy quantizers. It quantizes Q8_0 but
not the K-quants (its Q4_K has a dequantizer only), so Q4_K_M is left to llama.cpp's `llama-quantize` (docs/serving.md).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
from safetensors import safe_open
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from qft_core.model.sampling import recommended_sampling
from qft_core.model.tokenizer import EOS_TOKEN, PAD_TOKEN, qwen3_thinking_chat_template
from qft_core.package.layout import PackageError

GGUF_TYPES: dict[str, tuple[gguf.GGMLQuantizationType, gguf.LlamaFileType]] = {
    "f16": (gguf.GGMLQuantizationType.F16, gguf.LlamaFileType.MOSTLY_F16),
    "bf16": (gguf.GGMLQuantizationType.BF16, gguf.LlamaFileType.MOSTLY_BF16),
    "q8_0": (gguf.GGMLQuantizationType.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
}
# llama.cpp's pre-tokenizer name for the Qwen2/Qwen3 split regex (the same 151,643 BPE ranks).
QWEN_PRE_TOKENIZER = "qwen2"

# Hugging Face Qwen3 tensor names → llama.cpp's: whole-model tensors, then those of decoder layer N (`blk.N.…`).
QWEN3_TENSORS = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
QWEN3_LAYER_TENSORS = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
_LAYER_TENSOR = re.compile(r"^model\.layers\.(?P<layer>\d+)\.(?P<module>.+)\.weight$")
SUPPORTED_ARCHITECTURES = ("qwen3",)


class GgufExportError(PackageError):
    """A model directory that cannot be written as GGUF; the message (one line) names the file at fault."""


@dataclass(frozen=True)
class GgufFile:
    """One written GGUF file: its path, type and size."""

    path: Path
    gguf_type: str
    size_bytes: int
    tensors: int


def gguf_file_name(model_name: str, gguf_type: str) -> str:
    """`<model>-<TYPE>.gguf`, the naming llama.cpp and the hubs use (`qft-crypto-zh-Q8_0.gguf`)."""
    return f"{model_name}-{gguf_type.upper()}.gguf"


def qwen3_gguf_name(hf_name: str) -> str:
    """llama.cpp's name for the Hugging Face Qwen3 tensor `hf_name`; an unknown tensor is an error."""
    if hf_name in QWEN3_TENSORS:
        return QWEN3_TENSORS[hf_name]
    match = _LAYER_TENSOR.match(hf_name)
    if match and match["module"] in QWEN3_LAYER_TENSORS:
        return f"blk.{match['layer']}.{QWEN3_LAYER_TENSORS[match['module']]}.weight"
    raise GgufExportError(f"tensor {hf_name!r} has no llama.cpp name in qft's Qwen3 mapping")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GgufExportError(f"{path}: missing; the GGUF export needs it") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise GgufExportError(f"{path}: cannot read it: {error}") from None


def architecture_refusal(model_dir: Path) -> str | None:
    """Why the model in `model_dir` has no GGUF export here (its architecture has no tensor mapping), or None: the
    pipeline skips such a model with this reason instead of failing the run (the CPU demo's SmolLM2 is a Llama)."""
    path = Path(model_dir) / "config.json"
    model_type = _read_json(path).get("model_type")
    if model_type in SUPPORTED_ARCHITECTURES:
        return None
    supported = ", ".join(SUPPORTED_ARCHITECTURES)
    return f"{path}: model_type {model_type!r} has no GGUF mapping in qft (supported: {supported})"


def _model_config(model_dir: Path) -> dict:
    path = model_dir / "config.json"
    config = _read_json(path)
    refusal = architecture_refusal(model_dir)
    if refusal:
        raise GgufExportError(refusal)
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if rope.get("rope_type", "default") != "default":
        raise GgufExportError(f"{path}: rope type {rope['rope_type']!r} is not exported (only the default rope)")
    if config.get("use_sliding_window"):
        raise GgufExportError(f"{path}: use_sliding_window is true; Qwen3 GGUF export covers full attention only")
    return config


def _weight_files(model_dir: Path) -> list[Path]:
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise GgufExportError(f"{model_dir}: no *.safetensors weights to export")
    return files


def _load_tokenizer(model_dir: Path) -> PreTrainedTokenizerBase:
    if not (model_dir / "tokenizer.json").is_file():
        raise GgufExportError(
            f"{model_dir / 'tokenizer.json'}: missing; the GGUF carries the tokenizer's vocabulary and merges"
        )
    try:
        return AutoTokenizer.from_pretrained(model_dir, local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError) as error:
        raise GgufExportError(f"{model_dir}: the tokenizer does not load: {str(error).splitlines()[0]}") from None


def _add_architecture(writer: gguf.GGUFWriter, config: dict) -> None:
    arch = writer.arch
    rope = config.get("rope_parameters") or {}
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    writer.add_uint32(f"{arch}.context_length", config["max_position_embeddings"])
    writer.add_uint32(f"{arch}.embedding_length", config["hidden_size"])
    writer.add_uint32(f"{arch}.block_count", config["num_hidden_layers"])
    writer.add_uint32(f"{arch}.feed_forward_length", config["intermediate_size"])
    writer.add_uint32(f"{arch}.attention.head_count", config["num_attention_heads"])
    writer.add_uint32(f"{arch}.attention.head_count_kv", config["num_key_value_heads"])
    writer.add_uint32(f"{arch}.attention.key_length", head_dim)
    writer.add_uint32(f"{arch}.attention.value_length", head_dim)
    writer.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", config["rms_norm_eps"])
    writer.add_float32(f"{arch}.rope.freq_base", rope.get("rope_theta", config.get("rope_theta", 10_000.0)))


def _add_tokenizer(writer: gguf.GGUFWriter, model_dir: Path, vocab_size: int) -> None:
    """Byte-level BPE as llama.cpp reads it: every id's token string and type (ids past the tokenizer's, the
    embedding's padding rows, are UNUSED), the merges, the special ids and the chat template."""
    tokenizer = _load_tokenizer(model_dir)
    by_id = {token_id: token for token, token_id in tokenizer.get_vocab().items()}
    if len(by_id) > vocab_size:
        raise GgufExportError(
            f"{model_dir / 'tokenizer.json'}: {len(by_id):,} tokens, more than the model's vocab_size {vocab_size:,}"
        )
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for token_id in range(vocab_size):
        if token_id not in by_id:
            tokens.append(f"[PAD{token_id}]")
            types.append(gguf.TokenType.UNUSED)
        elif token_id in added:
            tokens.append(by_id[token_id])
            types.append(gguf.TokenType.CONTROL if added[token_id].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[token_id])
            types.append(gguf.TokenType.NORMAL)
    merges = _read_json(model_dir / "tokenizer.json").get("model", {}).get("merges") or []
    if not merges:
        raise GgufExportError(f"{model_dir / 'tokenizer.json'}: no BPE merges; only byte-level BPE is exported")
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(QWEN_PRE_TOKENIZER)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges([merge if isinstance(merge, str) else " ".join(merge) for merge in merges])
    eos_id, pad_id = tokenizer.convert_tokens_to_ids(EOS_TOKEN), tokenizer.convert_tokens_to_ids(PAD_TOKEN)
    writer.add_eos_token_id(eos_id)
    writer.add_pad_token_id(pad_id)
    # Qwen3 has no BOS; llama.cpp still wants an id, and prepends none while add_bos_token is false.
    writer.add_bos_token_id(pad_id)
    writer.add_add_bos_token(False)
    writer.add_chat_template(qwen3_thinking_chat_template())


def _add_sampling(writer: gguf.GGUFWriter, model_dir: Path) -> None:
    """The model folder's recommended sampling, which llama.cpp takes as its defaults."""
    sampling = recommended_sampling(model_dir)
    writer.add_sampling_temp(sampling["temperature"])
    if "top_p" in sampling:
        writer.add_sampling_top_p(sampling["top_p"])
    if "top_k" in sampling:
        writer.add_sampling_top_k(sampling["top_k"])


def _tensor_type(shape: Sequence[int], wanted: gguf.GGMLQuantizationType) -> gguf.GGMLQuantizationType:
    """Norm weights (1-D) stay F32, as in llama.cpp; a matrix whose rows do not fill whole blocks falls back to F16."""
    if len(shape) < 2:
        return gguf.GGMLQuantizationType.F32
    block_size, _ = gguf.GGML_QUANT_SIZES[wanted]
    return wanted if shape[-1] % block_size == 0 else gguf.GGMLQuantizationType.F16


def _tensors(weight_files: list[Path], config: dict) -> Iterator[tuple[str, str, Path]]:
    """(GGUF name, HF name, file) of every tensor to write; a tied lm_head is left out (llama.cpp reuses
    token_embd)."""
    for path in weight_files:
        with safe_open(path, framework="pt") as handle:
            for hf_name in handle.keys():
                if hf_name == "lm_head.weight" and config.get("tie_word_embeddings"):
                    continue
                yield qwen3_gguf_name(hf_name), hf_name, path


def export_gguf(model_dir: Path, out_path: Path, gguf_type: str, *, model_name: str) -> GgufFile:
    """Write the Qwen3 model in `model_dir` (config.json, *.safetensors, tokenizer.json) as the GGUF file `out_path`
    of `gguf_type` (f16, bf16 or q8_0). Tensors are streamed: one is in memory at a time, so a 4B model exports
    in a few GB of RAM. The file is written beside its final name and renamed into place when complete."""
    if gguf_type not in GGUF_TYPES:
        raise GgufExportError(f"GGUF type {gguf_type!r} is not exported (choose from {', '.join(GGUF_TYPES)})")
    model_dir, out_path = Path(model_dir), Path(out_path)
    config = _model_config(model_dir)
    wanted, file_type = GGUF_TYPES[gguf_type]
    tensors = list(_tensors(_weight_files(model_dir), config))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    partial = out_path.with_name(f".{out_path.name}.partial")
    writer = gguf.GGUFWriter(partial, config["model_type"])
    try:
        writer.add_name(model_name)
        writer.add_file_type(file_type)
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        _add_architecture(writer, config)
        _add_tokenizer(writer, model_dir, config["vocab_size"])
        _add_sampling(writer, model_dir)
        plan = []
        for gguf_name, hf_name, path in tensors:
            with safe_open(path, framework="pt") as handle:
                shape = list(handle.get_slice(hf_name).get_shape())
            qtype = _tensor_type(shape, wanted)
            block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
            nbytes = math.prod(shape) // block_size * type_size
            writer.add_tensor_info(gguf_name, shape, np.dtype(np.float32), nbytes, qtype)
            plan.append((hf_name, path, qtype))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for hf_name, path, qtype in plan:
            with safe_open(path, framework="pt") as handle:
                weights = handle.get_tensor(hf_name).float().numpy()
            writer.write_tensor_data(gguf.quants.quantize(weights, qtype))
        writer.close()
        partial.replace(out_path)
    except BaseException:
        writer.close()
        partial.unlink(missing_ok=True)
        raise
    return GgufFile(path=out_path, gguf_type=gguf_type, size_bytes=out_path.stat().st_size, tensors=len(plan))


# Ollama's default context is a few thousand tokens, too short for a reasoning trace and its answer.
MODELFILE_CONTEXT = 32_768
# Qwen3-Thinking-2507's format as an Ollama (Go) template: the system and user turns, earlier answers, and a reply
# opened inside <think>, as the Jinja template in the GGUF does. Ollama uses this template, not the GGUF's.
OLLAMA_TEMPLATE = """{{- range $m := .Messages }}
{{- if or (eq $m.Role "system") (eq $m.Role "user") }}<|im_start|>{{ $m.Role }}
{{ $m.Content }}<|im_end|>
{{ else if eq $m.Role "assistant" }}<|im_start|>assistant
{{ $m.Content }}<|im_end|>
{{ end }}
{{- end }}<|im_start|>assistant
<think>
"""


def ollama_modelfile(gguf_name: str, model_dir: Path) -> str:
    """An Ollama Modelfile for the GGUF file `gguf_name` lying beside it: the Qwen3-Thinking template, the stop
    tokens, the context and the sampling that `model_dir` recommends (`ollama create NAME -f Modelfile`)."""
    config = _read_json(Path(model_dir) / "config.json")
    context = min(config.get("max_position_embeddings", MODELFILE_CONTEXT), MODELFILE_CONTEXT)
    sampling = recommended_sampling(model_dir)
    lines = [
        f"FROM ./{gguf_name}",
        f'TEMPLATE """{OLLAMA_TEMPLATE}"""',
        f'PARAMETER stop "{EOS_TOKEN}"',
        f'PARAMETER stop "{PAD_TOKEN}"',
        f"PARAMETER num_ctx {context}",
        *(f"PARAMETER {key} {value}" for key, value in sampling.items()),
    ]
    return "\n".join(lines) + "\n"
