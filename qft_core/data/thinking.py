"""Reasoning traces: a deterministic generator for pairs without expert thinking, and a quality score for any trace."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from qft_core.data.terms import TermDictionary, TermMatch
from qft_core.records import ThinkingStructure, TrainingExample

QuestionKind = Literal["comparison", "why", "how", "numeric", "definition", "explanation"]

# Checked in this order: "为什么 AES 用 10 轮" is a why-question even though it names a number.
_QUESTION_CUES: tuple[tuple[QuestionKind, re.Pattern[str]], ...] = (
    ("comparison", re.compile(r"区别|不同|差异|异同|比较|相比|对比|优劣|优缺点|哪[个种]更|还是|\bvs\.?\b|versus", re.I)),
    ("why", re.compile(r"为什么|为何|为啥|原因|何以|\bwhy\b", re.I)),
    ("how", re.compile(r"如何|怎么|怎样|步骤|流程|过程|\bhow\b", re.I)),
    ("numeric", re.compile(r"多少|几[位轮个次种]|多长|多大|长度|位数|轮数|大小")),
    ("definition", re.compile(r"什么是|是什么|定义|含义|指什么|何谓|概念|what\s+is", re.I)),
)

_KIND_LABEL: dict[QuestionKind, str] = {
    "comparison": "比较题",
    "why": "原因题",
    "how": "过程题",
    "numeric": "数值题",
    "definition": "定义题",
    "explanation": "解释题",
}

_KIND_GUIDANCE: dict[QuestionKind, str] = {
    "comparison": "要先找出比较的对象，再从原理、安全性和用途上逐项对照。",
    "why": "要找出背后的原理或动机，而不只是复述结论。",
    "how": "要按先后顺序把步骤讲清楚，每一步说明做什么、为什么这样做。",
    "numeric": "要给出准确的数值和单位，并核对前后是否一致。",
    "definition": "要说清它是什么、核心机制是什么、用在哪里。",
    "explanation": "要围绕核心概念组织解释，把因果关系讲清楚。",
}

CATEGORY_LABELS_ZH: dict[str, str] = {
    "classical": "古典密码",
    "symmetric": "对称密码",
    "asymmetric": "公钥密码",
    "hash_mac": "哈希与消息认证",
    "signature": "数字签名",
    "key_exchange": "密钥交换",
    "pki_protocol": "公钥基础设施与安全协议",
    "cryptanalysis": "密码分析",
    "post_quantum": "后量子密码",
    "chinese_standard": "国密标准",
    "fundamentals": "密码学基础",
}

_STEP_CONNECTORS = ("其次", "接着", "进一步", "再者", "另外")
# What may stand between two compared terms: "SM3 和 MD5", "IV、nonce 和盐值", "AES 相比 SM4".
_BETWEEN_COMPARED = re.compile(r"\s*(?:和|与|及|以及|跟|同|或|还是|相比|对比|比较|vs\.?|versus|、|,|，|/)?\s*", re.I)
_CONCLUSION_MARKERS = ("综上", "因此", "所以", "总之", "总而言之", "可见", "由此", "结论", "最终", "答案是", "故")
_LEADING_MARKER = re.compile(r"^(?:综上所述|综上|因此|所以|总之|总而言之|可见|由此可见|故而|故)[，,：:\s]*")
_SENTENCE_END = re.compile(r"(?<=[。！？!?；;])|\n+")
_LIST_MARKER = re.compile(r"^\s*(?:[-*+•]\s+|\d+(?:[.)]\s+|、\s*)|[（(]\d+[）)]\s*|#+\s*|>\s*)")
_MARKUP_ONLY = re.compile(r"^[\s|:\-`*#>=_~]*$")
_MAX_QUESTION_CHARS = 120
_MAX_LINKED_TERMS = 3


def classify_question(question: str) -> QuestionKind:
    """What the question asks for, judged from its cue words; a question without cues asks for an explanation."""
    for kind, cue in _QUESTION_CUES:
        if cue.search(question):
            return kind
    return "explanation"


def split_sentences(text: str) -> list[str]:
    """Sentences of a Chinese text (split at 。！？； and line breaks), without list markers and pure Markdown lines."""
    sentences = []
    for piece in _SENTENCE_END.split(text):
        sentence = _LIST_MARKER.sub("", piece).strip()
        if sentence and not _MARKUP_ONLY.match(sentence):
            sentences.append(sentence)
    return sentences


def _term_label(dictionary: TermDictionary, term_id: str) -> str:
    return dictionary[term_id].zh


def _with_full_stop(sentence: str) -> str:
    return sentence if sentence[-1] in "。！？!?；;：:" else sentence + "。"


def _shorten(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "……"


def _compared_terms(question: str, matches: list[TermMatch]) -> list[str]:
    """The longest run of terms joined only by conjunctions ("IV、nonce 和盐值"); else the first two terms."""
    runs: list[list[TermMatch]] = []
    for match in matches:
        if runs and _BETWEEN_COMPARED.fullmatch(question, runs[-1][-1].end, match.start):
            runs[-1].append(match)
        else:
            runs.append([match])
    longest = max(runs, key=len, default=[])
    chosen = longest if len(longest) >= 2 else matches[:2]
    return list(dict.fromkeys(match.term_id for match in chosen))


def _joined(names: list[str]) -> str:
    return names[0] if len(names) == 1 else "、".join(names[:-1]) + "和" + names[-1]


def _analysis_phase(question: str, kind: QuestionKind, dictionary: TermDictionary) -> ThinkingStructure:
    details = []
    matches = dictionary.find(question)
    names = [_term_label(dictionary, term_id) for term_id in dict.fromkeys(m.term_id for m in matches)]
    compared = [_term_label(dictionary, term_id) for term_id in _compared_terms(question, matches)]
    if kind == "comparison" and len(compared) >= 2:
        details.append(f"需要对照的对象是{_joined(compared)}，要看它们在同一维度上有什么不同。")
    elif names:
        details.append(f"题目的核心概念是{_joined(names)}。")
    if kind == "numeric":
        details.append("数值要带单位（位、字节、轮），回答前先确认单位和所指的对象。")
    return ThinkingStructure(
        text=f"分析问题：这是一道{_KIND_LABEL[kind]}，{_KIND_GUIDANCE[kind]}",
        children=[ThinkingStructure(text=detail) for detail in details],
    )


def _recall_phase(question_terms: list[str], answer_terms: list[str], dictionary: TermDictionary) -> ThinkingStructure:
    recalled = list(dict.fromkeys([*question_terms, *answer_terms]))
    if not recalled:
        return ThinkingStructure(text="回忆相关概念：这里没有术语表里的专门概念，只能从密码学的一般原理出发。")
    children = []
    for term_id in recalled:
        term = dictionary[term_id]
        names = [term.en] if term.en != term.zh else []
        if term.abbreviation and term.abbreviation not in (term.en, term.zh):
            names.append(f"简称 {term.abbreviation}")
        other_names = f"（{'，'.join(names)}）" if names else ""
        where = "题目里直接提到了它" if term_id in question_terms else "回答时要用到它"
        children.append(
            ThinkingStructure(text=f"{term.zh}{other_names}属于{CATEGORY_LABELS_ZH[term.category]}方面的概念，{where}。")
        )
    categories = list(dict.fromkeys(CATEGORY_LABELS_ZH[dictionary[term_id].category] for term_id in recalled))
    return ThinkingStructure(
        text=f"回忆相关概念：一共涉及 {len(recalled)} 个术语，分属{'、'.join(categories)}。",
        children=children,
    )


def _reasoning_phase(sentences: list[str], recalled: set[str], dictionary: TermDictionary) -> ThinkingStructure:
    steps = []
    for index, sentence in enumerate(sentences):
        if index == 0:
            connector = "首先"
        elif index == len(sentences) - 1:
            connector = "最后"
        else:
            connector = _STEP_CONNECTORS[(index - 1) % len(_STEP_CONNECTORS)]
        linked = [term_id for term_id in dictionary.term_ids(sentence) if term_id in recalled]
        names = "、".join(_term_label(dictionary, term_id) for term_id in linked[:_MAX_LINKED_TERMS])
        link = f"结合{names}来看：" if linked else ""
        steps.append(ThinkingStructure(text=f"{connector}，{link}{_with_full_stop(sentence)}"))
    return ThinkingStructure(
        text=f"逐步推理：把答案拆成 {len(sentences)} 步，逐一和上面的概念对应起来。", children=steps
    )


def _conclusion_sentence(sentences: list[str]) -> str:
    for sentence in reversed(sentences):
        if any(marker in sentence for marker in _CONCLUSION_MARKERS):
            return sentence
    return sentences[-1]


def _conclusion_phase(
    question: str, answer: str, sentences: list[str], kind: QuestionKind, dictionary: TermDictionary
) -> ThinkingStructure:
    conclusion = _LEADING_MARKER.sub("", _conclusion_sentence(sentences)) or sentences[-1]
    text = f"得出结论：回到问题“{_shorten(question, _MAX_QUESTION_CHARS)}”，综上，{_with_full_stop(conclusion)}"
    children = []
    if kind == "numeric":
        quantities = list(dict.fromkeys(q.text for q in extract_quantities(answer, dictionary)))
        if quantities:
            children.append(ThinkingStructure(text=f"关键数值是{'、'.join(quantities)}，单位与题目所问一致。"))
    return ThinkingStructure(text=text, children=children)


def generate_thinking(example: TrainingExample, dictionary: TermDictionary) -> list[ThinkingStructure]:
    """A reasoning tree built only from the question, the answer and the dictionary: same input, same tree.

    One root whose four children are the phases: analyse the question (what kind of question it is and its
    core concepts), recall concepts (each term of question and answer with its English name and category),
    reason step by step (each answer sentence becomes a step linked to the concepts it uses), conclude
    (the answer's concluding sentence restated). Callers mark the result `thinking_origin="template"`; reasoning
    written by a model instead is qft_core.evaluate.written_reasoning's.
    """
    question, answer = example.question.strip(), example.answer.strip()
    kind = classify_question(question)
    question_terms = dictionary.term_ids(question)
    answer_terms = [term_id for term_id in dictionary.term_ids(answer) if term_id not in question_terms]
    sentences = split_sentences(answer) or [answer]
    root = ThinkingStructure(
        text=f"题目问：“{_shorten(question, _MAX_QUESTION_CHARS)}”。"
        "我先弄清问的是什么，再回忆相关概念，然后一步步推理，最后给出结论。",
        children=[
            _analysis_phase(question, kind, dictionary),
            _recall_phase(question_terms, answer_terms, dictionary),
            _reasoning_phase(sentences, {*question_terms, *answer_terms}, dictionary),
            _conclusion_phase(question, answer, sentences, kind, dictionary),
        ],
    )
    return [root]


# ---- numbers with units -------------------------------------------------------------------------------------

_NUMBER = r"\d+(?:\.\d+)?"
_LIST_SEPARATOR = r"\s*(?:、|,|/|或者|或|和|与|及|至|到|~|～|-|–|—|\bor\b|\band\b|\bto\b)\s*"
# A quantity is a number (or a list of numbers) right before a unit; "SHA-256", "2^128", "n/2 位", "第 3 位" are not.
# The leading lookahead for the digit every quantity starts with halves the time the search takes.
_QUANTITY = re.compile(
    rf"(?=\d)(?<![A-Za-z0-9_.\-^/])(?<!第)(?<!第 )((?:{_NUMBER}{_LIST_SEPARATOR})*{_NUMBER})\s*-?\s*"
    r"(?:(?P<bit>位|比特|bits?(?![A-Za-z]))|(?P<byte>字节|bytes?(?![A-Za-z]))|(?P<round>轮|rounds?(?![A-Za-z])))",
    re.I,
)
_UNIT_BITS = {"bit": ("bit", 1), "byte": ("bit", 8), "round": ("round", 1)}
_UNIT_ZH = {"bit": "位", "round": "轮"}

# What a length is the length of, first word of each entry as its display name. The word right after the unit
# ("256 位的密钥") wins over one before it.
_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "encapsulation_key": ("封装密钥", "encapsulation key"),
    "shared_secret": ("共享密钥", "共享秘密", "shared secret"),
    "public_key": ("公钥", "public key"),
    "private_key": ("私钥", "private key"),
    "key": ("密钥", "key"),
    "ciphertext": ("密文", "ciphertext"),
    "block": ("分组", "数据块", "block"),
    "output": ("输出", "摘要", "杂凑值", "哈希值", "散列值", "digest", "output"),
    "security": ("安全强度", "安全级别", "security"),
    "signature": ("签名", "签名值", "signature"),
    "modulus": ("模数", "模长", "modulus"),
    "iv": ("初始向量", "初始化向量", "iv", "nonce"),
    "tag": ("标签", "认证标签", "tag"),
    "state": ("状态", "state"),
    "rounds": ("轮数", "迭代"),
}
_ATTRIBUTE_WORD = re.compile(
    "|".join(
        rf"(?P<{name}>{'|'.join(rf'(?<![A-Za-z]){re.escape(w)}(?![A-Za-z])' for w in words)})"
        for name, words in _ATTRIBUTES.items()
    ),
    re.I,
)
_ATTRIBUTE_AFTER = re.compile(r"\s*的?\s*")
_NUMERIC_SENTENCE_END = re.compile(r"[。！？!?；;\n]")
_CLAUSE_BREAK = re.compile(r"[，：:]")


@dataclass(frozen=True)
class Quantity:
    """A number with a unit, and what it is about: the term and the attribute ("密钥", "输出") it measures."""

    value: float
    unit: str
    text: str
    context: str | None
    attribute: str | None

    @property
    def key(self) -> tuple[str | None, str | None, str]:
        return self.context, self.attribute, self.unit


def _sentence_spans(text: str) -> list[tuple[int, int]]:
    spans, start = [], 0
    for end_mark in _NUMERIC_SENTENCE_END.finditer(text):
        spans.append((start, end_mark.start()))
        start = end_mark.end()
    spans.append((start, len(text)))
    return [(s, e) for s, e in spans if e > s]


def _context_of(sentence: str, terms: list[TermMatch], start: int, end: int) -> tuple[TermMatch | None, int]:
    """The term a quantity is about, and where the text after that term begins.

    Within the quantity's clause the nearest term before it (else the first after it) wins; a clause
    without terms ("…的哈希函数，输出 256 位") belongs to the sentence's subject, its first term.
    """
    clause_start = max((m.end() for m in _CLAUSE_BREAK.finditer(sentence, 0, start)), default=0)
    clause_break = _CLAUSE_BREAK.search(sentence, end)
    clause_end = clause_break.start() if clause_break else len(sentence)
    before = [t for t in terms if clause_start <= t.start and t.end <= start]
    if before:
        return before[-1], before[-1].end
    after = [t for t in terms if end <= t.start and t.end <= clause_end]
    if after:
        return after[0], clause_start
    return (terms[0] if terms else None), clause_start


def _attribute_of(sentence: str, start: int, end: int, floor: int) -> str | None:
    following = _ATTRIBUTE_WORD.match(sentence, _ATTRIBUTE_AFTER.match(sentence, end).end())
    if following:
        return following.lastgroup
    preceding = list(_ATTRIBUTE_WORD.finditer(sentence, floor, start))
    return preceding[-1].lastgroup if preceding else None


def extract_quantities(text: str, dictionary: TermDictionary) -> list[Quantity]:
    """Every number with a unit (bit/位/比特, byte/字节 as 8 bits, round/轮) in the text, with its context term.

    The context is the term the quantity is about (see _context_of); the attribute is the measured thing
    named right after the unit ("256 位的密钥") or, failing that, the last one named before it.
    Only Arabic numerals are read: Chinese numerals collide with "每一轮", "两位专家".
    """
    return list(_quantities(text, dictionary))


# Evaluation reads the quantities of each answer three times (its key points, its numbers against the reference's,
# the reasoning's against it): the few texts of the pair being scored stay extracted.
_QUANTITIES_KEPT = 16


@lru_cache(maxsize=_QUANTITIES_KEPT)
def _quantities(text: str, dictionary: TermDictionary) -> tuple[Quantity, ...]:
    quantities = []
    for sentence_start, sentence_end in _sentence_spans(text):
        sentence = text[sentence_start:sentence_end]
        found = list(_QUANTITY.finditer(sentence))
        if not found:
            continue
        # A term that is itself a measured attribute ("密钥") says what is measured, not whose it is.
        terms = [match for match in dictionary.find(sentence) if not _ATTRIBUTE_WORD.fullmatch(match.surface)]
        floor = 0
        for match in found:
            unit_group = next(name for name in ("bit", "byte", "round") if match.group(name))
            unit, factor = _UNIT_BITS[unit_group]
            context, anchor = _context_of(sentence, terms, match.start(), match.end())
            anchor = max(floor, anchor)
            attribute = _attribute_of(sentence, match.start(), match.end(), anchor)
            for number in re.findall(_NUMBER, match.group(1)):
                quantities.append(
                    Quantity(
                        value=float(number) * factor,
                        unit=unit,
                        text=match.group(0).strip(),
                        context=context.term_id if context is not None else None,
                        attribute=attribute,
                    )
                )
            floor = match.end()
    return tuple(quantities)


def numeric_contradictions(reasoning: str, answer: str, dictionary: TermDictionary) -> tuple[int, list[str]]:
    """(shared keys, contradictions): a key (term, attribute, unit) in both texts whose value sets are disjoint.

    Only quantities with both a context term and an attribute are compared: a bare "4 轮" may be a
    reduced-round characteristic while "10 轮" is the full cipher, and guessing would flag sound reasoning.
    """
    def by_key(text: str) -> dict[tuple, list[Quantity]]:
        grouped: dict[tuple, list[Quantity]] = {}
        for quantity in extract_quantities(text, dictionary):
            if quantity.context is not None and quantity.attribute is not None:
                grouped.setdefault(quantity.key, []).append(quantity)
        return grouped

    in_reasoning, in_answer = by_key(reasoning), by_key(answer)
    shared = [key for key in in_reasoning if key in in_answer]
    contradictions = []
    for key in shared:
        stated = {q.value for q in in_reasoning[key]}
        expected = {q.value for q in in_answer[key]}
        if stated.isdisjoint(expected):
            context, attribute, unit = key
            subject = f"{_term_label(dictionary, context)} {_ATTRIBUTES[attribute][0]}"
            stated_text = "、".join(_format_value(v, unit) for v in sorted(stated))
            expected_text = "、".join(_format_value(v, unit) for v in sorted(expected))
            contradictions.append(f"{subject}：推理写 {stated_text}，答案写 {expected_text}")
    return len(shared), contradictions


def _format_value(value: float, unit: str) -> str:
    number = int(value) if value.is_integer() else value
    return f"{number} {_UNIT_ZH[unit]}"


# ---- the score ----------------------------------------------------------------------------------------------

_WEIGHTS = {"key_term_coverage": 0.35, "non_trivial": 0.35, "numeric_consistency": 0.20, "concluded": 0.10}
_MIN_REASONING_CHARS = 60
_DIVERSITY_FULL = 0.5
_NOVELTY_FULL = 0.8
_COPY_RUN = 8
_UNCLOSED_PENALTY = 0.5
_TAG_PAIRS = (("<think>", "</think>"), ("<thinking>", "</thinking>"))
_LETTERS_AND_DIGITS = re.compile(r"[^\W_]+")


class ThinkingScore(BaseModel):
    """The quality of one reasoning trace against its answer; `score` combines the parts (see score_thinking)."""

    model_config = ConfigDict(frozen=True)

    score: float = Field(ge=0.0, le=1.0)
    key_term_coverage: float = Field(ge=0.0, le=1.0)
    non_trivial: float = Field(ge=0.0, le=1.0)
    numeric_consistency: float = Field(ge=0.0, le=1.0)
    present: bool
    concluded: bool
    closed: bool
    missing_terms: list[str] = Field(default_factory=list)
    contradictions: list[str] = Field(default_factory=list)


def _content(text: str) -> str:
    """Letters and digits only (CJK included), lower-cased: what n-gram comparisons look at."""
    return "".join(_LETTERS_AND_DIGITS.findall(text.lower()))


def _ngrams(text: str, n: int) -> list[str]:
    return [text[i : i + n] for i in range(len(text) - n + 1)]


def _non_trivial(reasoning: str, answer: str) -> float:
    content = _content(reasoning)
    length = min(1.0, len(content) / _MIN_REASONING_CHARS)
    bigrams = _ngrams(content, 2)
    diversity = min(1.0, (len(set(bigrams)) / len(bigrams)) / _DIVERSITY_FULL) if bigrams else 0.0
    return length * diversity * min(1.0, _uncopied_share(content, _content(answer)) / _NOVELTY_FULL)


def new_share(reasoning: str, answer: str) -> float:
    """Share of the reasoning's letters and digits outside every 8-character run that also occurs in the answer:
    0 for a copy of the answer, 1 for a text sharing no run with it."""
    return _uncopied_share(_content(reasoning), _content(answer))


def _uncopied_share(content: str, answer_content: str) -> float:
    """Share of the reasoning's characters outside every _COPY_RUN-character run that also occurs in the answer."""
    copied = set(_ngrams(answer_content, _COPY_RUN))
    covered, covered_until = 0, 0
    for start in range(len(content) - _COPY_RUN + 1):
        if content[start : start + _COPY_RUN] in copied:
            covered += start + _COPY_RUN - max(start, covered_until)
            covered_until = start + _COPY_RUN
    return 1.0 - covered / len(content) if content else 0.0


def _concluded(reasoning: str) -> bool:
    tail = split_sentences(reasoning)[-2:]
    return any(marker in sentence for sentence in tail for marker in _CONCLUSION_MARKERS)


def _closed(reasoning: str) -> bool:
    lowered = reasoning.lower()
    return all(lowered.count(opening) == lowered.count(closing) for opening, closing in _TAG_PAIRS)


def score_thinking(reasoning: str, answer: str, dictionary: TermDictionary) -> ThinkingScore:
    """Score a reasoning trace against its answer; a pure function of the two strings and the dictionary.

    Parts, each in [0, 1]:
      key_term_coverage   = |T(answer) ∩ T(reasoning)| / |T(answer)|, T = dictionary term ids (1.0 if the
                            answer has none: there is nothing to reach).
      non_trivial         = length · diversity · novelty, with
                            length    = min(1, content chars / 60)              (content = letters and digits),
                            diversity = min(1, distinct bigrams / bigrams / 0.5) (repetition drives it to 0),
                            novelty   = min(1, uncopied / 0.8), uncopied = share of content chars outside any
                                        8-char run that also occurs in the answer
                            — a copy of the answer has novelty 0, hence non_trivial 0; a trace that pastes
                            the answer's sentences between connectives (as generated ones do) gets about 0.7.
      numeric_consistency = 1 − contradicted keys / shared keys (1.0 if none shared). A key is (context
                            term, measured attribute, unit) of a number with a unit (位/bit/比特, 字节/byte =
                            8 bits, 轮/round); it is contradicted when the values the reasoning gives for it and
                            those the answer gives are disjoint ("SM3 输出 128 位" against "SM3 输出 256 位").
      concluded           = 1 if the last two sentences carry a concluding marker (综上, 因此, 所以, …).
    score = 0.35·key_term_coverage + 0.35·non_trivial + 0.20·numeric_consistency + 0.10·concluded,
    halved when `<think>`/`<thinking>` tags are left unbalanced (closed = False); 0 when the trace is empty.
    """
    present = bool(_content(reasoning))
    closed = _closed(reasoning)
    answer_terms = dictionary.term_ids(answer)
    reached = set(dictionary.term_ids(reasoning))
    missing = [term_id for term_id in answer_terms if term_id not in reached]
    coverage = 1.0 - len(missing) / len(answer_terms) if answer_terms else 1.0
    shared, contradictions = numeric_contradictions(reasoning, answer, dictionary)
    consistency = 1.0 - len(contradictions) / shared if shared else 1.0
    if not present:
        return ThinkingScore(
            score=0.0, key_term_coverage=0.0, non_trivial=0.0, numeric_consistency=consistency, present=False,
            concluded=False, closed=closed, missing_terms=answer_terms, contradictions=contradictions,
        )
    non_trivial = _non_trivial(reasoning, answer)
    concluded = _concluded(reasoning)
    parts = {
        "key_term_coverage": coverage,
        "non_trivial": non_trivial,
        "numeric_consistency": consistency,
        "concluded": float(concluded),
    }
    score = sum(_WEIGHTS[name] * value for name, value in parts.items()) * (1.0 if closed else _UNCLOSED_PENALTY)
    return ThinkingScore(
        score=round(min(1.0, score), 6),
        key_term_coverage=round(coverage, 6),
        non_trivial=round(non_trivial, 6),
        numeric_consistency=round(consistency, 6),
        present=True,
        concluded=concluded,
        closed=closed,
        missing_terms=missing,
        contradictions=contradictions,
    )
