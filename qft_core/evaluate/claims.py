"""The claims an answer makes about named algorithms ("AES-256 有 14 轮", "ZUC 是序列密码", "ML-KEM（FIPS 203）"):
how answers word a length, a round count, a kind, a structure or a standard, read sentence by sentence. Finding what
a text states is a grammar of its own; whether it is right is the fact base's business (facts.py)."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from qft_core.data.terms import matching_view
from qft_core.evaluate.misconceptions import NEGATION, SENTENCE_END
from qft_core.evaluate.professional import STANDARD_CITATION, standard_key

# Attributes measured in bits (a byte counts 8), in rounds, and as a NIST security category.
BIT_ATTRIBUTES = (
    "key", "block", "output", "security", "public_key", "private_key", "ciphertext", "signature", "shared_secret",
    "iv", "tag", "state", "capacity", "rate", "round_key", "counter", "random", "modulus", "word",
)
NUMERIC_ATTRIBUTES = (*BIT_ATTRIBUTES, "rounds", "category")
KINDS = (
    "block_cipher", "stream_cipher", "hash", "xof", "mac", "aead", "signature", "kem", "public_key_encryption",
    "key_agreement", "identity_based",
)
STRUCTURES = ("feistel", "spn", "sponge", "merkle_damgard", "arx")

# How answers name what a number measures; the longest word wins where several start at one place.
_ATTRIBUTE_WORDS = {
    "key": ("密钥长度", "密钥大小", "密钥", "秘钥", "key length", "key size", "key"),
    "block": ("分组长度", "分组大小", "分组", "数据块", "块大小", "block size", "block length", "block"),
    "output": ("输出长度", "输出", "摘要长度", "摘要", "杂凑值", "哈希值", "散列值", "杂凑长度", "密钥流", "密钥字",
               "digest", "output", "hash value", "keystream"),
    "security": ("安全强度", "安全级别", "安全等级", "安全性", "安全", "security strength", "security level", "security"),
    "public_key": ("公钥", "封装密钥", "public key", "encapsulation key", "verification key"),
    "private_key": ("私钥", "解封装密钥", "private key", "decapsulation key", "signing key"),
    "ciphertext": ("密文", "ciphertext"),
    "signature": ("签名值", "签名长度", "签名", "signature"),
    "shared_secret": ("共享密钥", "共享秘密", "shared secret", "shared key"),
    "iv": ("初始向量", "初始化向量", "IV", "nonce"),
    "tag": ("认证标签", "标签", "认证码", "tag", "MAC"),
    "state": ("内部状态", "状态", "state"),
    "capacity": ("容量", "capacity"),
    "rate": ("速率", "比特率", "rate"),
    "round_key": ("轮密钥", "子密钥", "round key", "subkey"),
    "counter": ("计数器", "块计数器", "块计数", "counter", "block counter"),
    "random": ("随机数", "random"),
    "modulus": ("模数", "模长", "modulus"),
    "word": ("字长", "字", "word"),
}
_KIND_WORDS = {
    "block_cipher": ("分组密码", "分组加密算法", "分组算法", "块密码", "block cipher"),
    "stream_cipher": ("序列密码", "流密码", "流加密算法", "stream cipher"),
    "hash": ("杂凑算法", "杂凑函数", "哈希函数", "哈希算法", "散列函数", "散列算法", "hash function", "hash algorithm"),
    "xof": ("可扩展输出函数", "XOF", "extendable-output function"),
    "mac": ("消息认证码", "消息鉴别码", "message authentication code"),
    "aead": ("认证加密", "AEAD", "authenticated encryption"),
    "signature": ("签名算法", "签名方案", "数字签名", "签名", "signature scheme", "signature algorithm"),
    "kem": ("密钥封装", "KEM", "key encapsulation mechanism"),
    "public_key_encryption": ("公钥加密", "public-key encryption"),
    "key_agreement": ("密钥交换", "密钥协商", "key exchange", "key agreement"),
    "identity_based": ("标识密码", "基于标识", "基于身份", "identity-based"),
    "public_key": ("公钥密码", "公钥算法", "非对称", "public-key", "asymmetric"),
    "symmetric": ("对称加密", "对称密码", "对称算法", "symmetric"),
}
_STRUCTURE_WORDS = {
    "feistel": ("Feistel", "费斯妥", "费斯特尔"),
    "spn": ("SPN", "代换-置换网络", "代换置换网络", "代替-置换网络", "替代-置换网络", "substitution-permutation"),
    "sponge": ("海绵", "sponge"),
    "merkle_damgard": ("Merkle-Damgård", "Merkle-Damgard", "MD结构"),
    "arx": ("ARX",),
}


def _word_pattern(words_by_name: dict[str, Sequence[str]]) -> re.Pattern[str]:
    """One regex for the words, longest first, each a named group's alternative; ASCII words at word boundaries
    and with an optional plural 's'."""
    pairs = sorted(((word, name) for name, words in words_by_name.items() for word in words), key=lambda p: -len(p[0]))
    alternatives = []
    for word, name in pairs:
        body = re.escape(word).replace(r"\ ", r"\s+").replace(r"\-", r"[-\s]?")
        if word[-1].isascii() and word[-1].isalpha():
            body += r"s?(?![A-Za-z])"
        if word[0].isascii() and word[0].isalnum():
            body = r"(?<![A-Za-z0-9])" + body
        alternatives.append(f"(?P<{name}_{len(alternatives)}>{body})")
    # The lookahead lets the engine skip, with one test, the many positions where no word starts.
    firsts = sorted({char for word, _ in pairs for char in (word[0].lower(), word[0].upper())})
    starts = "[" + "".join(re.escape(char) for char in firsts) + "]"
    return re.compile(f"(?={starts})(?:{'|'.join(alternatives)})", re.IGNORECASE)


def _group_name(match: re.Match[str]) -> str:
    return match.lastgroup.rsplit("_", 1)[0]


_ATTRIBUTE_WORD = _word_pattern(_ATTRIBUTE_WORDS)
_KIND_WORD = _word_pattern(_KIND_WORDS)
_STRUCTURE_WORD = _word_pattern(_STRUCTURE_WORDS)

_NUMBER = r"\d{1,3}(?:,\d{3})+(?!\d)|\d+(?:\.\d+)?"
_SEPARATOR = r"\s*(?:、|/|或者|或|和|与|及|,\s|\bor\b|\band\b)\s*"
# A number (or list of numbers) with its unit; "SHA-256", "2^128", "第 3 位" are not quantities. Also "轮数为 32"
# and "NIST 安全类别 3", which carry their attribute instead of a unit.
_QUANTITY = re.compile(
    rf"(?=[\d轮rn安类等级lc])(?:(?<![A-Za-z0-9_.\-^/])(?<![第前后每各])(?<![第前后每各] )(?<!每个)(?<!每个 )"
    rf"(?<!first )(?<!last )(?<!each )(?<!every )(?P<numbers>(?:(?:{_NUMBER}){_SEPARATOR})*(?:{_NUMBER}))"
    r"\s*-?\s*(?:(?P<bit>位|比特|bits?(?![A-Za-z]))|(?P<byte>字节|bytes?(?![A-Za-z]))|(?P<round>轮|rounds?(?![A-Za-z])))"
    r"|(?:轮数|迭代轮数|rounds)\s*(?:为|是|=|：|:|共)?\s*(?P<rounds>\d+)(?![\d.]|\s*(?:位|比特|字节|bits?|bytes?))"
    r"|(?:NIST\s*)?(?:安全)?(?:类别|等级|级别|category|level)\s*(?:为|是|=|：|:)?\s*(?P<level>[1-5])(?![\d.]))",
    re.IGNORECASE,
)
_NUMBER_IN_LIST = re.compile(_NUMBER)
_RESPECTIVELY = re.compile(r"分别|依次|各自|respectively", re.IGNORECASE)
# A number near these words is about an attack, a reduced or truncated variant, a quantum adversary or a difference
# ("攻击可达 7 轮", "可以攻到 6 轮", "截断为 128 位", "多了 4 轮"), not the algorithm's parameter.
_NOT_THE_PARAMETER = re.compile(
    r"攻|分析|区分器|差分|约减|缩减|简化|截断|截取|截短|变体|量子|碰撞|原像|生日|多出|多了|少了|增加|减少|额外|相差|降至|降到|只剩"
    r"|减半|翻倍|增至|提高到|扩展到|扩展为|升级到|改为|变为"
    r"|(?<![A-Za-z])(?:attack|reduced|distinguisher|truncat|quantum|Grover|collision|preimage|birthday|more|fewer|less"
    r"|extra|half)",
    re.IGNORECASE,
)
# A sentence that supposes or degrades ("如果去掉 ShiftRows，…", "AES 会退化为 32 位分组密码") describes another
# algorithm than the one named; "若干" is "several", not "if".
_HYPOTHETICAL = re.compile(
    r"如果|假如|假设|假若|倘若|如若|若(?!干)|要是|一旦|否则|退化|沦为"
    r"|(?<![A-Za-z])(?:if|suppose|supposing|would|hypothetical(?:ly)?)(?![A-Za-z])",
    re.IGNORECASE,
)
# A count of rounds that is approximate or a point along the way ("约 6 轮", "6 轮左右", "3 轮后", "after 3 rounds")
# tells how far an attack or a trace reaches; the round counts of a cipher are exact and whole.
_ROUNDS_BEFORE = re.compile(
    r"(?:约|大约|大概|将近|近|超过|不到|至少|最多|(?<![A-Za-z])(?:about|around|approximately|up\s+to|after|within"
    r"|at\s+most|at\s+least))\s*$",
    re.IGNORECASE,
)
_ROUNDS_AFTER = re.compile(r"\s*(?:左右|上下|以上|以下|之后|以后|过后|后|以内|之内|内(?!部)|多)")
# A name that is the object of "以 … 为", "基于", "用" ("以 AES 为轮函数的 Feistel 结构") is a part, not the
# subject whose kind or structure the clause states.
_INSTRUMENT = re.compile(
    r"(?:以|用|使用|采用|基于|借助|通过|将|把|(?<![A-Za-z])(?:using|with|via|by|on))\s*$", re.IGNORECASE
)
_SENTENCE_MARKS = "。！？!?；;\n"
_CLAUSE_END = re.compile(r"[，：:]|,(?!\d{3})")
# Between a subject and its copula: a parenthesis ("SM4（GB/T 32907）是…") and adverbs, then an optional negation.
_COPULA = re.compile(
    r"\s*(?:算法|密码算法|协议|标准)?\s*(?:[（(][^（()）\n]{0,30}[)）])?\s*(?:也|就|则|本身|其实|实际上|都)?\s*"
    rf"(?P<negation>(?:{NEGATION})\s*)?"
    r"(?:(?P<zh>是|属于|为)|(?P<en>(?<![A-Za-z])(?:is|are)(?![A-Za-z])))\s*",
    re.IGNORECASE,
)
_AFTER_UNIT = re.compile(r"\s*(?:的|of\s+)?\s*", re.IGNORECASE)
# What may stand between the word naming an attribute and its number: "分组长度为 128 位", "输出 256 比特",
# "key size is 128 bits"; and between that word and the subject when it comes first ("分组长度：SM4 为 128 位").
_LINK = re.compile(
    r"\s*的?\s*(?:长度|大小|位数|length|size)?\s*"
    r"(?:(?:均|都|仍|固定|一般|通常|也|则|就|只|总共|一共|可以|可)?(?:为|是|有|取|达到?|等于|选)|共|共有|:|：|="
    r"|(?<![A-Za-z])(?:is|are|of|has|have|uses?|produces?|outputs?)(?![A-Za-z]))?"
    r"\s*(?:(?<![A-Za-z])(?:a|an|the|about|approximately)(?![A-Za-z])|约|大约|仅|只有)?\s*",
    re.IGNORECASE,
)
_BEFORE_SUBJECT = re.compile(r"\s*(?:的|of|：|:)?\s*", re.IGNORECASE)
_KIND_WINDOW = 30
_STRUCTURE_WINDOW = 24
_NEGATION = re.compile(NEGATION, re.IGNORECASE)
# "采用非平衡 Feistel 结构" names its structure: only a denial of the structure itself negates it.
_STRUCTURE_NEGATION = re.compile(
    r"不是|并非|而非|不采用|没有采用|未采用|不使用|不同于|不像|并不|不再|(?<![A-Za-z])(?:not|unlike|instead|rather)(?![A-Za-z])",
    re.IGNORECASE,
)
# The words allowed between a subject and the standard it is defined in: "SM4（GB/T 32907）", "AES 定义于 FIPS 197".
_STANDARD_GAP = re.compile(
    r"[\s（(【\[：:]*(?:的?(?:国家标准|行业标准|标准号|标准|规范)|定义于|定义在|规定于|发布为|出自|遵循|对应|依据|参见|见|即|为|是"
    r"|(?<![A-Za-z])(?:is\s+)?(?:defined|specified|standardi[sz]ed)\s+in|(?<![A-Za-z])in(?![A-Za-z]))*[\s（(【\[：:]*",
    re.IGNORECASE,
)
# Families whose numbers carry a revision or part ("FIPS 180-4", "GB/T 32918.2") that names the same standard.
_REVISED_FAMILIES = ("FIPS", "GB", "GB/T", "GB/Z", "GM", "GM/T")
_COMPOUND_JOIN = "-_/"


@dataclass(frozen=True, slots=True)
class Claim:
    """One thing an answer states about a subject; `values` in bits, rounds or levels, or names for categories."""

    subject: str
    attribute: str
    values: tuple
    text: str


@dataclass(frozen=True)
class ClaimAgreement:
    """Numeric claims about the same subject and attribute in two texts, and on how many their values are disjoint."""

    compared: int
    contradicted: int

    @property
    def score(self) -> float:
        """1 - contradicted / compared; NaN when the texts state no number about the same thing."""
        return 1.0 - self.contradicted / self.compared if self.compared else math.nan


@dataclass(frozen=True, slots=True)
class _Mention:
    subject: str
    start: int
    end: int
    compound: bool
    # Joined after another name ("XTS-AES-128"): a different algorithm, whose numbers are not this subject's.
    prefixed: bool


def find_claims(text: str, names: re.Pattern[str], subject_of: Callable[[str], str]) -> list[Claim]:
    """The claims the text makes about the subjects `names` matches (`subject_of` a match's text is its subject id),
    each distinct claim once, in text order."""
    if not text:
        return []
    # Full-width and traditional spellings read as their plain forms, at the same positions.
    text = matching_view(text)
    mentions = [
        _Mention(subject_of(match.group()), match.start(), match.end(),
                 _is_compound(text, match.start(), match.end()), _is_prefixed(text, match.start()))
        for match in names.finditer(text)
    ]
    if not mentions:
        return []
    found: dict[tuple, Claim] = {}
    first = 0
    while first < len(mentions):
        start, end = _sentence_around(text, mentions[first].start)
        last = first + 1
        while last < len(mentions) and mentions[last].end <= end:
            last += 1
        inside = mentions[first:last]
        first = last
        for claim in (*_numeric_claims(text, start, end, inside), *_categorical_claims(text, start, end, inside)):
            found.setdefault((claim.subject, claim.attribute, claim.values), claim)
    return list(found.values())


def numeric_values(claims: Sequence[Claim]) -> dict[tuple[str, str], set]:
    """Every value the claims give each numeric (subject, attribute) pair."""
    grouped: dict[tuple[str, str], set] = {}
    for claim in claims:
        if claim.attribute in NUMERIC_ATTRIBUTES:
            grouped.setdefault((claim.subject, claim.attribute), set()).update(claim.values)
    return grouped


def compare_claims(answer: Sequence[Claim], reference: Sequence[Claim]) -> ClaimAgreement:
    """How many numeric (subject, attribute) pairs both texts state, and on how many their values are disjoint
    ("AES-256 有 10 轮" against "AES-256 有 14 轮")."""
    stated, expected = numeric_values(answer), numeric_values(reference)
    shared = [key for key in stated if key in expected]
    return ClaimAgreement(len(shared), sum(stated[key].isdisjoint(expected[key]) for key in shared))


def _is_compound(text: str, start: int, end: int) -> bool:
    """Part of a joined name ("HMAC-SHA256", "TLS_AES_128_GCM_SHA256"): its claims may be the whole's."""
    before = text[start - 1 : start]
    after = text[end : end + 2]
    return (bool(before) and before in _COMPOUND_JOIN) or (
        len(after) == 2 and after[0] in _COMPOUND_JOIN and after[1].isascii() and after[1].isalpha()
    )


def _is_prefixed(text: str, start: int) -> bool:
    return start >= 2 and text[start - 1] in "-_" and text[start - 2].isascii() and text[start - 2].isalnum()


def _sentence_around(text: str, position: int) -> tuple[int, int]:
    """The sentence the position is in: only sentences with a name in them are read, so they are found from the
    names rather than by splitting the whole text."""
    # With no ". " before the position, rfind's -1 plus the mark's length would skip the text's first character.
    full_stop = text.rfind(". ", 0, position)
    last_mark = max(text.rfind(mark, 0, position) for mark in _SENTENCE_MARKS)
    start = max(last_mark + 1, full_stop + 2 if full_stop >= 0 else 0)
    end = SENTENCE_END.search(text, position)
    return start, end.start() if end else len(text)


def _clause_bounds(text: str, start: int, end: int, sentence_start: int, sentence_end: int) -> tuple[int, int]:
    before = max((mark.end() for mark in _CLAUSE_END.finditer(text, sentence_start, start)), default=sentence_start)
    after = _CLAUSE_END.search(text, end, sentence_end)
    return before, after.start() if after else sentence_end


def _numeric_claims(text: str, start: int, end: int, mentions: list[_Mention]) -> Iterable[Claim]:
    """Numbers with units (or "轮数为 32", "安全类别 3") after a subject in its sentence, each with what it measures.

    A sentence that pairs lists with lists ("分别") is left alone, and so is a number inside a name ("RSA 2048"), a
    part ("前 16 轮", "各 32 字节"), one whose subject-to-clause span speaks of attacks, truncation, quantum
    adversaries or changes ("攻击可达 7 轮", "截断为 128 位", "密钥增至 256 位"), one in a supposition up to its
    clause ("若去掉 ShiftRows，AES 会退化为 32 位分组密码"), a round count that is approximate or a point along the
    way ("约 6 轮", "3 轮后"), and one whose nearest name is joined after another ("XTS-AES-128 用 256 位密钥").
    """
    if _RESPECTIVELY.search(text, start, end):
        return
    previous_end = start
    for quantity in _QUANTITY.finditer(text, start, end):
        if any(mention.start < quantity.end() and quantity.start() < mention.end for mention in mentions):
            continue
        owner = next((mention for mention in reversed(mentions) if mention.end <= quantity.start()), None)
        if owner is None or owner.prefixed:
            continue
        clause_start, clause_end = _clause_bounds(text, quantity.start(), quantity.end(), start, end)
        if _NOT_THE_PARAMETER.search(text, owner.start, clause_end) or _HYPOTHETICAL.search(text, start, clause_end):
            continue
        if (quantity["round"] or quantity["rounds"]) and _is_partial_count(text, quantity):
            continue
        if quantity["level"]:
            attribute, values = "category", (float(quantity["level"]),)
        elif quantity["rounds"]:
            attribute, values = "rounds", (float(quantity["rounds"]),)
        else:
            factor = 8.0 if quantity["byte"] else 1.0
            numbers = _NUMBER_IN_LIST.findall(quantity["numbers"])
            values = tuple(float(number.replace(",", "")) * factor for number in numbers)
            if quantity["round"]:
                attribute = "rounds"
            else:
                attribute, attribute_end = _attribute_of(
                    text, quantity, owner, max(clause_start, owner.end, previous_end), clause_start, clause_end
                )
                previous_end = max(quantity.end(), attribute_end)
                if attribute is None:
                    continue
        yield Claim(owner.subject, attribute, values, text[quantity.start() : quantity.end()])


def _is_partial_count(text: str, quantity: re.Match[str]) -> bool:
    before = text[max(0, quantity.start() - 16) : quantity.start()]
    return bool(_ROUNDS_BEFORE.search(before) or _ROUNDS_AFTER.match(text, quantity.end()))


def _attribute_of(
    text: str, quantity: re.Match[str], owner: _Mention, floor: int, clause_start: int, clause_end: int
) -> tuple[str | None, int]:
    """What a length measures, and where the words naming it end.

    The word right after its unit ("256 位密钥", "a 256-bit key") names it; else a word before it in its clause,
    linked to it only by a copula ("SM4 的分组长度为 128 位", "SHA-256 outputs 256 bits"), or one before the subject
    ("分组长度：SM4 为 128 位"). A word further away ("64 位密钥中有 8 位") may be about something else: none.
    """
    following = _ATTRIBUTE_WORD.match(text, _AFTER_UNIT.match(text, quantity.end()).end(), clause_end)
    if following:
        return _group_name(following), following.end()
    between = list(_ATTRIBUTE_WORD.finditer(text, floor, quantity.start()))
    if between and _LINK.fullmatch(text, between[-1].end(), quantity.start()):
        return _group_name(between[-1]), quantity.end()
    if clause_start < owner.start and _LINK.fullmatch(text, owner.end, quantity.start()):
        leading = list(_ATTRIBUTE_WORD.finditer(text, clause_start, owner.start))
        if leading and _BEFORE_SUBJECT.fullmatch(text, leading[-1].end(), owner.start):
            return _group_name(leading[-1]), quantity.end()
    return None, quantity.end()


def _categorical_claims(
    text: str, sentence_start: int, sentence_end: int, mentions: list[_Mention]
) -> Iterable[Claim]:
    """Kind and structure are stated of a subject, not of a name used as a part ("以 AES 为轮函数") nor in a
    supposition; a standard cited right after a name is that name's either way."""
    for index, mention in enumerate(mentions):
        if mention.compound:
            continue
        limit = mentions[index + 1].start if index + 1 < len(mentions) else sentence_end
        clause_start, clause_end = _clause_bounds(text, mention.start, mention.end, sentence_start, limit)
        if not (
            _INSTRUMENT.search(text, clause_start, mention.start)
            or _HYPOTHETICAL.search(text, sentence_start, clause_end)
        ):
            yield from _kind_claim(text, mention, clause_end)
            yield from _structure_claim(text, mention, clause_end)
        yield from _standard_claim(text, mention, limit)


def _kind_claim(text: str, mention: _Mention, clause_end: int) -> Iterable[Claim]:
    """"ZUC 是序列密码", "SM4 is a block cipher": in Chinese the head noun ends the phrase, so the last kind word
    counts; in English the first after the copula. A negated copula or a negation before the kind says nothing."""
    copula = _COPULA.match(text, mention.end, clause_end)
    if copula is None or copula["negation"]:
        return
    window_end = min(clause_end, copula.end() + _KIND_WINDOW)
    negation = _NEGATION.search(text, copula.end(), window_end)
    if negation:
        window_end = negation.start()
    words = list(_KIND_WORD.finditer(text, copula.end(), window_end))
    if not words:
        return
    word = words[0] if copula["en"] else words[-1]
    yield Claim(mention.subject, "kind", (_group_name(word),), text[mention.start : word.end()])


def _structure_claim(text: str, mention: _Mention, clause_end: int) -> Iterable[Claim]:
    word = _STRUCTURE_WORD.search(text, mention.end, min(clause_end, mention.end + _STRUCTURE_WINDOW))
    if word is None or _STRUCTURE_NEGATION.search(text, mention.end, word.start()):
        return
    yield Claim(mention.subject, "structure", (_group_name(word),), text[mention.start : word.end()])


def _standard_claim(text: str, mention: _Mention, limit: int) -> Iterable[Claim]:
    gap = _STANDARD_GAP.match(text, mention.end, limit)
    citation = STANDARD_CITATION.match(text, gap.end(), limit)
    if citation is None:
        return
    key = standard_identity(*standard_key(citation["family"], citation["number"]))
    yield Claim(mention.subject, "standard", (key,), text[mention.start : citation.end()])


def standard_identity(family: str, number: str) -> tuple[str, str]:
    """A standard without its revision or part, for the families that number them so ("FIPS 180-4" is FIPS 180)."""
    if family in _REVISED_FAMILIES:
        number = re.split(r"[-.]", number, maxsplit=1)[0]
    return family, number
