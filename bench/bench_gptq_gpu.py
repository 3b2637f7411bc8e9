"""GPTQ of a Qwen3-4B-Thinking-2507-shaped model on one GPU through qft's own quantize and verify code.

    python bench/bench_gptq_gpu.py --splits SPLITS_DIR --out OUT_DIR [--layers 36] [--work /tmp/qft-gptq]

No hub here, so the model has Qwen3-4B's exact shape (36 layers, hidden 2560, 32 × 128 query heads, 8 key/value
heads, intermediate 9728, tied 151,936 × 2560 embedding) with seeded random bf16 weights, and the offline Qwen3
tokenizer and chat template. The time GPTQ takes depends on the shapes, the calibration set and the card, not on
what the weights have learnt, so `quantize` seconds, size on disk, load time and tokens/s carry over to the real
checkpoint. Perplexity and agreement do not: on random weights every variant is near-uniform, so those columns
only show that the package loads and computes, not how much quality GPTQ keeps.

Calibration is the training split in chat form, as `qft run` does (`quant.calibration_samples` texts of at most
`quant.calibration_max_tokens` tokens); verification is the test split. Writes results.json (package metadata,
the comparison rows, phase timings, versions, card) under --out and prints it. Asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from datetime import date
from importlib import metadata
from pathlib import Path

import torch
from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from bench_train_gpu import QWEN3_4B  # noqa: E402

from qft_core.config import QuantConfig  # noqa: E402
from qft_core.model.registry import tiny_qwen3_config  # noqa: E402
from qft_core.model.tokenizer import qwen3_tokenizer_dir  # noqa: E402
from qft_core.package.quantize import quantize  # noqa: E402
from qft_core.package.compare import (  # noqa: E402
    chat_formatted_texts,
    check_degradation,
    compare_packages,
    evaluate_directory,
    comparison_set,
)
from qft_core.records import ThinkingExample, read_parquet  # noqa: E402


def build_random_model(directory: Path, layers: int, seed: int, cache_dir: Path) -> float:
    """Write a Qwen3-4B-shaped model with random bf16 weights (built on the GPU) and the Qwen3 tokenizer."""
    started = time.perf_counter()
    tokens = tiny_qwen3_config()
    config = Qwen3Config(
        **{**QWEN3_4B, "num_hidden_layers": layers},
        bos_token_id=tokens.bos_token_id,
        eos_token_id=tokens.eos_token_id,
        pad_token_id=tokens.pad_token_id,
        dtype="bfloat16",
    )
    torch.manual_seed(seed)
    with torch.device("cuda"):
        model = Qwen3ForCausalLM(config).to(torch.bfloat16)
    model.generation_config.eos_token_id = [config.eos_token_id, config.pad_token_id]
    model.generation_config.pad_token_id = config.pad_token_id
    model.save_pretrained(directory)
    shutil.copytree(qwen3_tokenizer_dir(cache_dir), directory, dirs_exist_ok=True)
    del model
    torch.cuda.empty_cache()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--splits", type=Path, required=True, help="folder with train.parquet and test.parquet")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=Path("/tmp/qft-gptq"), help="where the models are written")
    parser.add_argument("--layers", type=int, default=QWEN3_4B["num_hidden_layers"])
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--kernel", default="gptq_triton", help="quant.gptq_kernel (auto needs CUTLASS from GitHub)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    merged, package_dir = args.work / "merged", args.work / "gptq"
    config = QuantConfig(gptq_kernel=args.kernel)

    build_seconds = build_random_model(merged, args.layers, args.seed, args.work / "cache")
    print(f"random model written in {build_seconds:.1f} s", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(merged, local_files_only=True)
    train = read_parquet(args.splits / "train.parquet", ThinkingExample)
    test = read_parquet(args.splits / "test.parquet", ThinkingExample)

    torch.cuda.reset_peak_memory_stats()
    package = quantize(
        merged, "gptq", package_dir, config, calibration_texts=chat_formatted_texts(train, tokenizer), device="cuda"
    )
    quantize_peak_gib = torch.cuda.max_memory_allocated() / 1024**3
    print(f"gptq package written in {package.seconds:.1f} s", flush=True)

    verification = comparison_set(test, tokenizer, config)
    reference = evaluate_directory(merged, verification, config, device="cuda")
    rows = compare_packages(reference, [evaluate_directory(package_dir, verification, config, device="cuda")])
    results = {
        "date": date.today().isoformat(),
        "card": torch.cuda.get_device_name(),
        "versions": {name: metadata.version(name) for name in ("torch", "transformers", "gptqmodel")},
        "python": platform.python_version(),
        "layers": args.layers,
        "gptq_kernel": args.kernel,
        "random_model_build_seconds": round(build_seconds, 1),
        "quantize_seconds": package.seconds,
        "quantize_peak_gpu_gib": round(quantize_peak_gib, 2),
        "calibration_samples": package.calibration_samples,
        "package": package.metadata(),
        "rows": rows,
        "degradation": [check_degradation(row, config) for row in rows],
    }
    text = json.dumps(results, ensure_ascii=False, indent=2, default=str)
    (args.out / "results.json").write_text(text + "\n", encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
