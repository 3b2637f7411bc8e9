"""Hand arithmetic of Qwen3-4B's memory and the settings, shapes and hardware the shape, memory and plan tests
share."""

from dataclasses import replace

from qft_core.config import QftConfig
from qft_core.model.shape import ModelShape
from qft_core.train.hardware import GIB, GpuInfo, HardwareProfile
from qft_core.train.memory import MemorySetting

ALL_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# Hand arithmetic for Qwen3-4B (h 2560, 36 layers, 32 heads × 128 = q 4096, 8 KV heads × 128 = kv 1024,
# intermediate 9728, vocab 151,936, tied) in bf16 (2 bytes) at r=16 on all 7 projections.
QWEN3_4B_PARAMS = (
    151_936 * 2560  # tied embedding: 388,956,160
    + 36 * (2 * 2560 * 4096 + 2 * 2560 * 1024 + 2 * 128 + 3 * 2560 * 9728 + 2 * 2560)  # 36 × 100,930,816
    + 2560  # final norm
)
# r·(in+out): q 16·6656 + k 16·3584 + v 16·3584 + o 16·6656 + gate/up/down 3 · 16·12288 = 917,504 per layer
QWEN3_4B_LORA_R16 = 36 * (106_496 + 57_344 + 57_344 + 106_496 + 196_608 + 196_608 + 196_608)
WEIGHTS = 4_022_468_096 * 2
LORA_STATES = 33_030_144 * 16  # fp32 weight 4 + fp32 grad 4 + AdamW moments 8
CONTEXT = 3 * GIB // 4  # CUDA context, one rank
# A compiled layer with LoRA dropout 0.05 and flex attention keeps per token: norm inputs 2·(2·2560 + 4), q/k norm
# inputs 2·5120 + 4·40, roped q, k and v 2·(4096 + 2·1024), attention output and log-sum-exp 2·4096 + 4·32,
# gate and up 2·2·9728, each adapter's dropped-out input and mask 3·(5·2560 + 4096 + 9728), lora_A outputs
# 7·2·2·16.
LAYER = 10_248 + 10_400 + 12_288 + 8_320 + 38_912 + 79_872 + 448
OUTSIDE_LAYERS = 4 * 2560 + 2 * 2560  # final norm's fp32 input, gradient of the hidden states
ROW_1024 = 1024 * (36 * LAYER + OUTSIDE_LAYERS)
# one 1024-token loss chunk, compiled: bf16 logits, fp32 buffer, gradient, previous gradient (2 + 4 + 2 + 2)
LOGIT_CHUNK = 1024 * 151_936 * 10
SCORED_HIDDEN_PER_ROW = 1024 * 2 * 2560  # the copy of the scored hidden states the chunks are cut from


def gpu_profile(count: int, memory_gib: float, capability: str = "9.0", fast_path: bool = True) -> HardwareProfile:
    gpus = [GpuInfo(index=i, name="fake", memory_gib=memory_gib, compute_capability=capability) for i in range(count)]
    return HardwareProfile(
        hostname="fake",
        gpus=gpus,
        physical_cores=32,
        logical_cores=64,
        ram_gib=256,
        torch_version="2.5",
        bf16_supported=capability >= "8.0",
        compiled_kernels=fast_path,
        flex_attention=fast_path,
    )


def cpu_profile(ram_gib: float = 24) -> HardwareProfile:
    return HardwareProfile(hostname="cpu", physical_cores=2, logical_cores=2, ram_gib=ram_gib, torch_version="2.5")


def config(**sections) -> QftConfig:
    """The hand arithmetic assumes r=16 on all projections, dropout 0.05, 1024 tokens, 1024-token loss chunks."""
    sections["lora"] = {"r": 16, "dropout": 0.05, "target_modules": ALL_TARGETS} | sections.get("lora", {})
    sections["training"] = {"loss_chunk_tokens": 1024} | sections.get("training", {})
    sections["model"] = {"max_length": 1024} | sections.get("model", {})
    return QftConfig.model_validate(sections)


def budget(memory_gib: float) -> int:
    return int(int(memory_gib * GIB) * 0.95)


def planned_total(allocated: int, context: int = CONTEXT) -> int:
    """What the plan compares with its budget: the allocator's peak, 10% slack on it, the CUDA context."""
    return allocated + -(-allocated // 10) + context


def setting(**changes) -> MemorySetting:
    """One H200 running the benchmark's engine path: bf16, r 16 on every projection, dropout 0, full rows."""
    base = MemorySetting(
        device="cuda",
        dtype="bfloat16",
        world_size=1,
        sharded=False,
        micro_batch=4,
        seq_len=2048,
        checkpoint_layers=0,
        lora_r=16,
        lora_targets=tuple(ALL_TARGETS),
        lora_dropout=0.0,
        loss_chunk_tokens=1024,
        rows="full",
        compiled_kernels=True,
        flex_attention=True,
    )
    return replace(base, **changes)


TINY = ModelShape.from_dims(
    hidden=128, layers=2, heads=4, kv_heads=2, head_dim=32, intermediate=256, vocab=512, tied_embeddings=True
)
QWEN3_4B_8_LAYERS = ModelShape.from_dims(
    hidden=2560, layers=8, heads=32, kv_heads=8, head_dim=128, intermediate=9728, vocab=151_936, tied_embeddings=True
)


def tiny_setting(**changes) -> MemorySetting:
    """The tiny shape (h 128, q 128, kv 64, i 256, vocab 512, 2 layers) at r 8 on every projection, 2 × 64 tokens."""
    return setting(**({"micro_batch": 2, "seq_len": 64, "lora_r": 8, "loss_chunk_tokens": 32} | changes))
