import math

import pytest

from qft_core.evaluate.claims import Claim, compare_claims
from qft_core.evaluate.facts import FactBase, FactBaseError, load_default_fact_base


@pytest.fixture(scope="module")
def facts() -> FactBase:
    return load_default_fact_base()


def claims_of(facts: FactBase, text: str) -> list[tuple]:
    return [(claim.subject, claim.attribute, claim.values) for claim in facts.claims(text)]


def counts(facts: FactBase, text: str) -> tuple[int, int]:
    check = facts.check_text(text)
    return len(check.confirmed), len(check.contradicted)


# --- the example and hand-made right and wrong answers ---------------------------------------------------


def test_aes_256_with_10_rounds_contradicts_the_fact_base_and_the_reference(facts):
    wrong, right = "AES-256 有 10 轮。", "AES-256 有 14 轮。"
    check = facts.check_text(wrong)
    assert (len(check.confirmed), len(check.contradicted)) == (0, 1)
    assert check.contradicted[0].describe() == "aes_256 rounds: stated 10, fact 14 (FIPS 197 §5, Figure 4 (Nr = 14))"
    assert counts(facts, right) == (1, 0)
    agreement = compare_claims(facts.claims(wrong), facts.claims(right))
    assert (agreement.compared, agreement.contradicted, agreement.score) == (1, 1, 0.0)


@pytest.mark.parametrize(
    ("answer", "confirmed", "contradicted"),
    [
        ("SM4 的分组长度为 128 位，密钥长度为 128 位，共 32 轮。", 3, 0),
        ("SM4 的分组长度为 64 位，密钥长度为 128 位，共 16 轮。", 1, 2),
        ("SHA-256 输出 256 比特。", 1, 0),
        ("SHA-256 输出 512 比特。", 0, 1),
        ("SHA-256 produces a 256-bit digest.", 1, 0),
        ("AES-256 uses a 256-bit key and 14 rounds.", 2, 0),
        ("AES-128 uses a 256-bit key.", 0, 1),
        ("ML-KEM-768 的密文为 1088 字节，封装密钥为 1,184 字节。", 2, 0),
        ("ML-KEM-768 的密文为 768 字节。", 0, 1),
        ("ML-DSA-65 属于 NIST 安全类别 3，签名 3309 字节。", 2, 0),
        ("RSA-2048 的安全强度为 128 位。", 0, 1),
        ("SHA3-256 的容量为 512 位。", 1, 0),
        ("ＡＥＳ－２５６ 有 １０ 轮。", 0, 1),
        ("XTS-AES-128 用 256 位密钥，而 AES-128 本身用 256 位密钥。", 0, 1),  # only the joined name is another
        ("若干文献称 AES-256 有 10 轮。", 0, 1),  # "若干" is "several", not "if"
        ("AES-256 共 10 轮，3 轮后即可完全扩散。", 0, 1),  # a point along the way leaves the count beside it
    ],
)
def test_numeric_claims_in_chinese_and_english(facts, answer, confirmed, contradicted):
    assert counts(facts, answer) == (confirmed, contradicted)


@pytest.mark.parametrize(
    ("answer", "confirmed", "contradicted"),
    [
        ("ZUC 是序列密码。", 1, 0),
        ("SM4 是一种序列密码。", 0, 1),
        ("SM4 是分组密码而不是序列密码。", 1, 0),
        ("SHA-256 is a hash function.", 1, 0),
        ("SM2 是基于椭圆曲线的公钥密码算法。", 1, 0),
        ("ML-KEM 是一种后量子签名算法。", 0, 1),
        ("AES 采用 Feistel 结构。", 0, 1),
        ("SM4 采用非平衡 Feistel 结构。", 1, 0),
        ("SM3 采用 Merkle-Damgård 结构。", 1, 0),
        ("SM3（GB/T 32905—2016）", 1, 0),
        ("SM3 的标准是 GB/T 32918。", 0, 1),
        ("ML-KEM（FIPS 204）", 0, 1),
        ("SHA-256 定义于 FIPS 180-4。", 1, 0),
    ],
)
def test_categorical_claims_kind_structure_and_standard(facts, answer, confirmed, contradicted):
    assert counts(facts, answer) == (confirmed, contradicted)


@pytest.mark.parametrize(
    "answer",
    [
        "SM4 不是序列密码。",  # a denial states no kind
        "AES is not a stream cipher.",
        "对 7 轮 AES-128 的攻击。",  # the number is about an attack
        "AES-128 目前最好的攻击只到 7 轮。",
        "SHA-256 的抗碰撞安全强度为 128 位。",  # collision strength is not the hash's security attribute
        "SHA-512 的输出截断为 256 位。",
        "AES-128、AES-192 和 AES-256 分别有 10、12 和 14 轮。",  # lists paired with lists
        "SM3 的布尔函数在前 16 轮和后 48 轮不同。",  # parts of the whole
        "Ed25519 的签名由 R 和 S 组成，各 32 字节。",
        "DES 的 64 位密钥中有 8 位是奇偶校验位。",  # a number far from the word it may measure
        "ChaCha20 使用 96 位 nonce 和 32 位块计数器。",
        "双重 DES 看似有 112 位密钥。",  # another algorithm with the same letters
        "HMAC-SHA256（FIPS 198-1）",  # a standard cited for a compound name
        "112 位：3DES（三密钥），RSA 2048 位。",  # a number inside a name
        "XTS-AES-128 用 256 位密钥。",  # a name joined after another is another algorithm
        "XTS 模式下，XTS-AES-128 的密钥为 256 位。",
        "若去掉 ShiftRows，AES 会退化为 4 个独立的 32 位分组密码。",  # a supposition
        "AES 会退化为 4 个独立的 32 位分组密码。",
        "如果 AES-128 只用 6 轮，它就不安全。",
        "If AES-256 had 10 rounds, it would be weaker.",
        "FF1 和 FF3 都是以 AES 为轮函数的 Feistel 结构。",  # a name used as a part is not the clause's subject
        "这种模式以 AES 为核心构造了一个序列密码。",
        "对 AES 可以攻到 6 轮左右，但对完整的 10 轮无效。",  # how far an attack or a trace reaches
        "利用 AES 的字节结构：3 轮后每个字节位置上的异或和恒为 0。",
        "AES-128 约 6 轮即可完全扩散。",
        "In AES, after 3 rounds every output byte depends on every input byte.",
    ],
)
def test_sound_statements_are_not_contradictions(facts, answer):
    assert facts.check_text(answer).contradicted == []


def test_the_bundled_corpus_contradicts_the_fact_base_nowhere(facts):
    """Expert answers are the false-positive test: every corpus sentence the checker reads must agree."""
    from qft_core.config import PathsConfig

    paths = PathsConfig()
    contradicted, confirmed = [], 0
    for path in sorted(paths.resolve(paths.corpus_dir).glob("*.md")):
        for paragraph in path.read_text(encoding="utf-8").split("\n"):
            check = facts.check_text(paragraph)
            confirmed += len(check.confirmed)
            contradicted += [f"{path.name}: {verdict.describe()}" for verdict in check.contradicted]
    assert contradicted == []
    assert confirmed >= 50


def test_compare_claims_counts_shared_numeric_keys_and_disjoint_values(facts):
    answer = facts.claims("SM3 的输出长度为 256 比特，消息分组为 512 位。")
    reference = facts.claims("SM3 的输出为 32 字节。ZUC 是序列密码。")
    assert (compare_claims(answer, reference).compared, compare_claims(answer, reference).contradicted) == (1, 0)
    assert math.isnan(compare_claims(facts.claims("今天天气很好。"), reference).score)


def test_a_list_of_values_counts_only_when_all_are_right_or_all_wrong(facts):
    assert counts(facts, "AES 的密钥可以是 128、192 或 256 位。") == (1, 0)
    assert counts(facts, "AES 的密钥可以是 64、80 位。") == (0, 1)
    check = facts.check([Claim("aes", "key", (128.0, 64.0), "128、64 位")])
    assert (check.confirmed, check.contradicted) == ([], [])
    assert math.isnan(check.accuracy)


def test_every_fact_names_its_source_and_children_inherit_from_parents(facts):
    assert facts.fact("aes_256", "block").values == frozenset({128.0})  # from the parent aes
    assert facts.fact("aes_256", "rounds").values == frozenset({14.0})  # its own
    assert facts.fact("ml_kem_768", "shared_secret").values == frozenset({256.0})  # 32 bytes
    assert facts.fact("tls13", "kind") is None


# --- the file's validation ---------------------------------------------------------------------------------------


def write(tmp_path, body: str):
    path = tmp_path / "facts.yaml"
    path.write_text(body, encoding="utf-8")
    return path


def test_loads_a_valid_file(tmp_path):
    facts = FactBase.load(write(tmp_path, """subjects:
  - id: toy
    names: [TOY-1]
    facts:
      - {attribute: block, bytes: [16], source: "Toy Standard §1"}
"""))
    assert counts(facts, "TOY-1 的分组长度为 128 位。") == (1, 0)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("subjects:\n  - id: toy\n    names: [T1]\n    facts:\n      - {attribute: colour, bits: [1], source: s}\n",
         r"facts\.yaml:2: subject 'toy', fact 'colour': unknown attribute"),
        ("subjects:\n  - id: toy\n    names: [T1]\n    facts:\n      - {attribute: key, bits: [128]}\n",
         r"facts\.yaml:2: subject 'toy', fact 'key': every fact needs its 'source'"),
        ("subjects:\n  - id: toy\n    names: [T1]\n    facts:\n      - {attribute: rounds, bits: [10], source: s}\n",
         r"fact 'rounds': values must be given as rounds, not bits"),
        ("subjects:\n  - id: toy\n    names: [T1]\n    facts:\n      - {attribute: kind, is: [teapot], source: s}\n",
         r"fact 'kind': unknown kind \['teapot'\]"),
        ("subjects:\n  - id: a\n    names: [T1]\n  - id: b\n    names: [T-1]\n",
         r"facts\.yaml:4: subject 'b': name 'T-1' already belongs to subject 'a'"),
        ("subjects:\n  - id: a\n    names: [T1]\n    parent: nobody\n", r"subject 'a': unknown parent 'nobody'"),
        ("subjects: 3\n", r"the top level must be a mapping with a 'subjects' list"),
    ],
)
def test_bad_files_name_the_file_line_and_subject(tmp_path, body, expected):
    with pytest.raises(FactBaseError, match=expected):
        FactBase.load(write(tmp_path, body))
