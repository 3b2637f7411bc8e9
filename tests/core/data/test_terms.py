from collections import defaultdict
from pathlib import Path

import pytest

from qft_core.data.terms import (
    TERM_CATEGORIES,
    TermDictionary,
    TermDictionaryError,
    TermMatch,
    load_default_dictionary,
    surface_key,
)
from qft_core.records import CryptoTerm


@pytest.fixture(scope="module")
def dictionary() -> TermDictionary:
    return load_default_dictionary()


def spans(dictionary: TermDictionary, text: str) -> list[tuple[str, str, int, int]]:
    return [(match.term_id, match.surface, match.start, match.end) for match in dictionary.find(text)]


def term(term_id: str, zh: str, category: str = "fundamentals", complexity: int = 1) -> CryptoTerm:
    return CryptoTerm(id=term_id, zh=zh, en=term_id.replace("_", " "), category=category, complexity=complexity)


def write_dictionary(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "terms.yaml"
    path.write_text(body, encoding="utf-8")
    return path


# --- the shipped dictionary -------------------------------------------------------------------------


def test_default_dictionary_has_at_least_300_terms_and_every_category(dictionary):
    per_category = defaultdict(int)
    for entry in dictionary.terms:
        per_category[entry.category] += 1
    assert len(dictionary) >= 300
    assert dictionary.categories == sorted(TERM_CATEGORIES)
    assert min(per_category.values()) >= 20


def test_default_dictionary_ids_are_unique_slugs_with_valid_complexity(dictionary):
    ids = [entry.id for entry in dictionary.terms]
    assert len(ids) == len(set(ids))
    assert all(entry.id.isascii() and entry.id == entry.id.lower() for entry in dictionary.terms)
    assert {entry.complexity for entry in dictionary.terms} == {1, 2, 3, 4, 5}


def test_no_surface_form_belongs_to_two_terms(dictionary):
    owners = defaultdict(set)
    for entry in dictionary.terms:
        for form in entry.surface_forms():
            owners[surface_key(form)].add(entry.id)
    shared = {key: ids for key, ids in owners.items() if len(ids) > 1}
    assert shared == {}


def test_no_surface_form_is_a_single_character(dictionary):
    assert [form for form in dictionary.surface_forms() if len(surface_key(form)) < 2] == []


@pytest.mark.parametrize("form", ["哈希", "杂凑", "散列", "哈希函数", "散列函数", "杂凑函数", "hash function", "Hash"])
def test_hash_synonyms_map_to_one_term(dictionary, form):
    assert dictionary.term_ids(form) == ["hash_function"]


# Close concepts that the dictionary once merged under one id: an answer naming one where the reference names the
# other must not score a shared term.
CLOSE_BUT_DIFFERENT = [
    ("最小熵", "min_entropy", "香农熵"),
    ("min-entropy", "min_entropy", "entropy"),
    ("SHA-512/256", "sha512_256", "SHA-512"),
    ("SHA-512/224", "sha512_224", "SHA-512"),
    ("第二原像攻击", "second_preimage_attack", "原像攻击"),
    ("second-preimage attack", "second_preimage_attack", "preimage attack"),
    ("Rainbow签名", "rainbow_signature", "多变量密码"),
    ("UOV", "uov_signature", "多变量密码"),
    ("UOV", "uov_signature", "Rainbow签名"),
    ("MQ问题", "mq_problem", "多变量密码"),
    ("FREAK攻击", "freak", "降级攻击"),
    ("电子签名", "electronic_signature", "数字签名"),
    ("数字签名标准", "digital_signature_standard", "DSA签名算法"),
    ("IND-CCA1", "ind_cca1", "IND-CCA2"),
    ("不可延展性", "non_malleability", "可延展性"),
    ("隐写分析", "steganalysis", "隐写术"),
    ("SIKE", "sidh_sike", "CSIDH"),
    ("SQIsign", "sqisign", "同源密码"),
    ("NTRU Prime", "ntru_prime", "NTRU"),
    ("AES-GCM-SIV", "gcm_siv", "SIV模式"),
    ("抗误用认证加密", "misuse_resistant_ae", "SIV模式"),
    ("CRIME攻击", "crime_attack", "BREACH攻击"),
    ("选择前缀碰撞", "chosen_prefix_collision", "碰撞攻击"),
    ("标识密码", "identity_based_cryptography", "基于身份的加密"),
    ("TOTP", "totp", "HOTP"),
    ("Dual_EC_DRBG", "dual_ec_drbg", "密码后门"),
    ("密钥建立", "key_establishment", "密钥协商"),
    ("密钥传输", "key_transport", "密钥协商"),
    ("基于口令的密钥派生函数", "password_based_kdf", "PBKDF2"),
    ("JWS", "jws", "JWT"),
    ("cSHAKE", "cshake", "SHAKE128"),
    ("128-EEA3", "eea3", "128-EIA3"),
    ("128-EIA3", "eia3", "ZUC"),
    ("Intel SGX", "intel_sgx", "TrustZone"),
]


@pytest.mark.parametrize(("form", "term_id", "other"), CLOSE_BUT_DIFFERENT)
def test_close_concepts_are_different_terms(dictionary, form, term_id, other):
    (other_id,) = dictionary.term_ids(other)
    assert dictionary.term_ids(form) == [term_id]
    assert other_id != term_id


def test_sha256_hash_signature_is_a_signature_over_a_hash_not_a_hash_based_signature(dictionary):
    assert dictionary.term_ids("对安装包的 SHA-256 哈希签名") == ["sha256", "hash_function", "digital_signature"]
    assert dictionary.term_ids("SPHINCS+ 是基于哈希的签名") == ["slh_dsa", "hash_based_signature"]


def test_every_term_is_found_by_its_chinese_name(dictionary):
    missed = [entry.id for entry in dictionary.terms if dictionary.term_ids(entry.zh) != [entry.id]]
    assert missed == []


def test_load_default_dictionary_is_loaded_once():
    assert load_default_dictionary() is load_default_dictionary()


# --- find -------------------------------------------------------------------------------------------


def test_find_returns_term_ids_and_spans(dictionary):
    text = "使用AES-128加密，再用HMAC计算消息认证码。"
    assert dictionary.find(text) == [
        TermMatch("aes", "AES-128", 2, 9),
        TermMatch("encryption", "加密", 9, 11),
        TermMatch("hmac", "HMAC", 14, 18),
        TermMatch("mac", "消息认证码", 20, 25),
    ]


def test_longest_surface_form_wins(dictionary):
    assert spans(dictionary, "公钥密码学") == [("public_key_cryptography", "公钥密码学", 0, 5)]
    assert spans(dictionary, "椭圆曲线密码") == [("ecc", "椭圆曲线密码", 0, 6)]
    assert spans(dictionary, "SHA-256") == [("sha256", "SHA-256", 0, 7)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("DESIGN", []),
        ("SM23", []),
        ("sha256sum", []),
        ("3DES", ["triple_des"]),
        ("AES-256", ["aes"]),
        ("用AES的密钥", ["aes", "key"]),
        ("des和aes", ["des", "aes"]),
        ("SM2/SM3", ["sm2", "sm3"]),
        ("CTR_DRBG", ["drbg"]),
    ],
)
def test_ascii_terms_match_only_at_word_boundaries(dictionary, text, expected):
    assert dictionary.term_ids(text) == expected


def test_full_width_and_traditional_text_match_with_original_spans(dictionary):
    text = "ＡＥＳ－１２８與橢圓曲線"
    assert spans(dictionary, text) == [("aes", "ＡＥＳ－１２８", 0, 7), ("elliptic_curve", "橢圓曲線", 8, 12)]


def test_space_in_a_surface_form_matches_any_whitespace_or_none(dictionary):
    assert spans(dictionary, "TLS1.3 与 TLS  1.2") == [("tls13", "TLS1.3", 0, 6), ("tls12", "TLS  1.2", 9, 17)]


def test_dash_variants_match_the_hyphenated_form(dictionary):
    assert dictionary.term_ids("Diffie–Hellman") == ["diffie_hellman"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("增加密度", []),
        ("秘密文件", []),
        ("增加密钥长度", ["key_length"]),
        ("中国密码学会", ["cryptography"]),
        ("说明文档", []),
    ],
)
def test_non_terms_keep_everyday_words_from_matching(dictionary, text, expected):
    assert dictionary.term_ids(text) == expected


def test_term_ids_are_unique_in_order_of_first_occurrence(dictionary):
    assert dictionary.term_ids("SM4和AES，再用SM4分组密码算法") == ["sm4", "aes"]


def test_find_on_empty_text_is_empty(dictionary):
    assert dictionary.find("") == []
    assert dictionary.term_ids("今天天气很好") == []


def test_many_terms_with_shared_prefixes_match_leftmost_longest():
    # More first characters than one group of the matcher's trie holds, and six forms that start with 密.
    names = ["密码", "密码学", "密钥", "密文", "密封", "密度计", "明文", "公钥", "私钥", "签名", "散列", "杂凑",
             "认证", "协议", "证书", "随机数", "熵源", "格密码", "量子", "侧信道"]
    many = TermDictionary([term(f"t{index}", name) for index, name in enumerate(names)])
    text = "密码学用密钥把明文变成密文，侧信道会泄露随机数；格密码抗量子。"
    assert [(match.surface, match.start) for match in many.find(text)] == [
        ("密码学", 0), ("密钥", 4), ("明文", 7), ("密文", 11), ("侧信道", 14), ("随机数", 20), ("格密码", 24), ("量子", 28),
    ]


# --- complexity and categories ----------------------------------------------------------------------


@pytest.fixture
def small() -> TermDictionary:
    return TermDictionary(
        [
            term("plaintext", "明文", complexity=1),
            term("lwe", "带错误学习", category="post_quantum", complexity=5),
            term("sm4", "分组密码算法", category="chinese_standard", complexity=3),
        ]
    )


def test_complexity_is_half_max_plus_half_mean_of_distinct_terms(small):
    assert small.complexity(["plaintext", "lwe"]) == pytest.approx(0.5 * 5 + 0.5 * 3)
    assert small.complexity(["plaintext", "plaintext", "lwe", "sm4"]) == pytest.approx(0.5 * 5 + 0.5 * 3)
    assert small.complexity(["sm4"]) == 3.0
    assert small.complexity([]) == 0.0


def test_complexity_of_unknown_term_raises(small):
    with pytest.raises(KeyError, match="unknown term id 'nope'"):
        small.complexity(["nope"])


def test_categories_of_are_sorted_and_distinct(small):
    assert small.categories_of(["sm4", "plaintext", "lwe", "sm4"]) == [
        "chinese_standard",
        "fundamentals",
        "post_quantum",
    ]


def test_get_returns_none_for_unknown_id(small):
    assert small.get("lwe").zh == "带错误学习"
    assert small.get("nope") is None
    assert "lwe" in small and "nope" not in small


# --- broken dictionary files ------------------------------------------------------------------------

ENTRY = """\
  - id: {id}
    zh: {zh}
    en: {en}
    abbreviation: null
    synonyms: [{synonyms}]
    category: {category}
    complexity: {complexity}
"""


def entry(id="aes", zh="高级加密标准", en="Advanced Encryption Standard", synonyms="", category="symmetric", complexity=2):
    return ENTRY.format(id=id, zh=zh, en=en, synonyms=synonyms, category=category, complexity=complexity)


def test_loads_a_valid_file_with_non_terms(tmp_path):
    path = write_dictionary(tmp_path, "terms:\n" + entry(synonyms="AES") + "non_terms: [增加]\n")
    loaded = TermDictionary.load(path)
    assert [item.id for item in loaded.terms] == ["aes"]
    assert loaded.term_ids("增加高级加密标准") == ["aes"]


def test_duplicate_id_names_file_line_and_id(tmp_path):
    path = write_dictionary(tmp_path, "terms:\n" + entry() + entry(zh="AES算法", en="AES"))
    with pytest.raises(TermDictionaryError) as caught:
        TermDictionary.load(path)
    message = str(caught.value)
    assert message.startswith(f"{path}:9: entry 1 (id 'aes'): duplicate id")
    assert f"{path}:2: entry 0" in message


def test_unknown_category_names_file_and_id(tmp_path):
    path = write_dictionary(tmp_path, "terms:\n" + entry(category="quantum"))
    with pytest.raises(TermDictionaryError, match=r"entry 0 \(id 'aes'\): unknown category 'quantum'") as caught:
        TermDictionary.load(path)
    assert str(caught.value).startswith(f"{path}:2:")


@pytest.mark.parametrize("complexity", ["0", "6", "hard"])
def test_bad_complexity_names_file_id_and_field(tmp_path, complexity):
    path = write_dictionary(tmp_path, "terms:\n" + entry(id="sm4", zh="SM4", complexity=complexity))
    with pytest.raises(TermDictionaryError, match=r"\(id 'sm4'\): field 'complexity'") as caught:
        TermDictionary.load(path)
    assert str(caught.value).startswith(str(path))


def test_surface_form_shared_by_two_terms_names_both(tmp_path):
    second = entry(id="hash_function", zh="哈希", en="hash function", category="hash_mac")
    path = write_dictionary(tmp_path, "terms:\n" + entry(synonyms="哈希") + second)
    expected = r"\(id 'hash_function'\): surface form '哈希' already belongs to term 'aes'"
    with pytest.raises(TermDictionaryError, match=expected):
        TermDictionary.load(path)


def test_single_character_surface_form_is_rejected(tmp_path):
    path = write_dictionary(tmp_path, "terms:\n" + entry(id="entropy", zh="熵", en="entropy", category="fundamentals"))
    with pytest.raises(TermDictionaryError, match=r"\(id 'entropy'\): surface form '熵' is shorter than 2"):
        TermDictionary.load(path)


def test_non_term_that_is_a_surface_form_is_rejected(tmp_path):
    path = write_dictionary(tmp_path, "terms:\n" + entry() + "non_terms: [高级加密标准]\n")
    with pytest.raises(TermDictionaryError, match=f"{path.name}: non-term '高级加密标准'.*term 'aes'"):
        TermDictionary.load(path)


def test_non_slug_id_is_rejected(tmp_path):
    path = write_dictionary(tmp_path, "terms:\n" + entry(id="AES-GCM"))
    with pytest.raises(TermDictionaryError, match=r"\(id 'AES-GCM'\): id must be an ascii slug"):
        TermDictionary.load(path)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("terms: [unclosed\n", "not valid YAML"),
        ("- just a list\n", "must be a mapping with a 'terms' list"),
        ("terms:\n  - 42\n", "entry 0: must be a mapping"),
    ],
)
def test_malformed_file_names_the_file(tmp_path, body, expected):
    path = write_dictionary(tmp_path, body)
    with pytest.raises(TermDictionaryError, match=expected) as caught:
        TermDictionary.load(path)
    assert str(caught.value).startswith(str(path))


def test_missing_file_names_the_file(tmp_path):
    path = tmp_path / "absent.yaml"
    with pytest.raises(TermDictionaryError, match="cannot read term dictionary") as caught:
        TermDictionary.load(path)
    assert str(caught.value).startswith(str(path))
