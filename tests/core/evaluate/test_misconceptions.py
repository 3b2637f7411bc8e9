from pathlib import Path

import pytest

from qft_core.config import REPO_ROOT
from qft_core.data.terms import TERM_CATEGORIES, load_default_dictionary
from qft_core.evaluate.misconceptions import (
    MisconceptionListError,
    compile_pattern,
    detect_misconceptions,
    load_default_misconceptions,
    load_misconceptions,
)


@pytest.fixture(scope="module")
def dictionary():
    return load_default_dictionary()


@pytest.fixture(scope="module")
def misconceptions(dictionary):
    return load_default_misconceptions(dictionary)


def found(text, misconceptions):
    return [hit.misconception_id for hit in detect_misconceptions(text, misconceptions)]


def test_curated_list_has_at_least_thirty_entries_with_known_categories(misconceptions):
    assert len(misconceptions) >= 30
    assert len({m.id for m in misconceptions}) == len(misconceptions)
    assert {m.category for m in misconceptions} <= set(TERM_CATEGORIES)
    assert all(m.claim and m.correction and m.patterns for m in misconceptions)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("MD5 是一种加密算法。", ["md5_is_encryption"]),
        ("MD5 is an encryption algorithm.", ["md5_is_encryption"]),
        ("ＭＤ５是一種加密算法。", ["md5_is_encryption"]),
        ("SM3 输出 128 位。", ["sm3_output_length"]),
        ("ECB 能隐藏数据模式。", ["ecb_hides_patterns"]),
        ("Base64 是一种加密方式。", ["base64_is_encryption"]),
        ("AES-256 比 AES-128 慢一倍，所以不安全。", ["aes256_slower_so_insecure", "aes256_twice_as_slow"]),
        ("SHA-1 仍然是安全的。", ["sha1_secure"]),
        ("盐值必须保密。", ["salt_must_be_secret"]),
        ("对称加密比非对称加密慢。", ["symmetric_slower_than_public_key"]),
        ("AES-128 有 14 轮。", ["aes_round_count"]),
        ("HMAC 可以提供不可否认性。", ["mac_non_repudiation"]),
        ("非对称算法 SM2 的安全性基于大整数分解。", ["sm2_based_on_factoring"]),
    ],
)
def test_wrong_claims_are_detected(misconceptions, text, expected):
    assert found(text, misconceptions) == expected


@pytest.mark.parametrize(
    "text",
    [
        "MD5 不是加密算法，而是哈希函数。",
        "MD5 并不是加密算法。",
        "MD5 is not an encryption algorithm.",
        "不能说 MD5 是加密算法。",
        "很多人误以为 MD5 是加密算法。",
        "常见误区：MD5 是加密算法。",
        "MD5 是加密算法吗？",
        "MD5 是加密算法。这种说法是错误的。",
        "SM3 输出 256 位。",
        "SM3 的杂凑值为 256 位，比 MD5 的 128 位长。",
        "ECB 不能隐藏数据模式。",
        "ECB 模式无法隐藏明文的数据模式。",
        "Base64 只是编码，不是加密。",
        "SHA-1 曾被认为是安全的。",
        "盐值不需要保密，和哈希值一起存储。",
        "非对称加密比对称加密慢。",
        "AES-128 有 10 轮，AES-256 有 14 轮。",
        "针对 AES-256 前 10 轮的攻击。",
        "带认证的 DH 密钥交换能防止中间人攻击。",
        "HMAC 不能提供不可否认性。",
        "3DES 仍然安全。",
        "SM2 是非对称加密算法。",
    ],
)
def test_correct_negated_or_discussed_statements_pass(misconceptions, text):
    assert found(text, misconceptions) == []


def test_each_misconception_counts_once_with_its_span(misconceptions):
    text = "据说 MD5 是加密算法。其实 MD5 是加密算法，MD5 是一种加密算法。"
    hits = detect_misconceptions(text, misconceptions)
    assert [(hit.misconception_id, hit.text) for hit in hits] == [("md5_is_encryption", "MD5 是加密算法")]
    assert text[hits[0].start : hits[0].end] == hits[0].text


def test_no_pattern_fires_on_the_expert_corpus(misconceptions):
    for path in sorted((REPO_ROOT / "data" / "corpus").glob("*.md")):
        assert found(path.read_text(encoding="utf-8"), misconceptions) == [], path.name


def test_term_macro_matches_every_surface_form_at_word_boundaries(dictionary):
    # Patterns run on the lower-cased view of the text.
    pattern = compile_pattern("{sm3} 是", dictionary)
    assert pattern.search("sm3杂凑算法是") and pattern.search("sm3 是") and pattern.search("gb/t 32905 是")
    assert not pattern.search("xsm3 是") and not pattern.search("sm33 是")


def test_gap_does_not_cross_a_negation_or_a_clause_mark(dictionary):
    pattern = compile_pattern("{md5} {gap:4} 加密算法", dictionary)
    assert pattern.search("md5 是一种加密算法")
    assert not pattern.search("md5 不是加密算法") and not pattern.search("md5 是哈希，加密算法")


def write_list(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "misconceptions.yaml"
    path.write_text("misconceptions:\n" + body, encoding="utf-8")
    return path


def test_unknown_term_is_reported_with_file_line_and_id(tmp_path, dictionary):
    path = write_list(
        tmp_path,
        "  - id: ok\n    category: hash_mac\n    claim: a\n    correction: b\n    patterns: ['{md5} 是']\n"
        "  - id: broken\n    category: hash_mac\n    claim: a\n    correction: b\n    patterns: ['{no_such_term} 是']\n",
    )
    with pytest.raises(MisconceptionListError, match=rf"{path}:7: entry 1 \(id 'broken'\): pattern 0: unknown term"):
        load_misconceptions(path, dictionary)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("category: nowhere\n    claim: a\n    correction: b\n    patterns: ['x']", "unknown category 'nowhere'"),
        ("category: hash_mac\n    claim: a\n    correction: b\n    patterns: []", "field 'patterns'"),
        ("category: hash_mac\n    claim: a\n    correction: b\n    patterns: ['(']", "not a valid regex"),
        ("category: hash_mac\n    correction: b\n    patterns: ['x']", "field 'claim'"),
    ],
)
def test_invalid_entries_are_rejected(tmp_path, dictionary, entry, message):
    path = write_list(tmp_path, f"  - id: bad\n    {entry}\n")
    with pytest.raises(MisconceptionListError, match=message):
        load_misconceptions(path, dictionary)


def test_duplicate_ids_are_rejected(tmp_path, dictionary):
    entry = "  - id: twice\n    category: hash_mac\n    claim: a\n    correction: b\n    patterns: ['x']\n"
    with pytest.raises(MisconceptionListError, match="duplicate id"):
        load_misconceptions(write_list(tmp_path, entry + entry), dictionary)
