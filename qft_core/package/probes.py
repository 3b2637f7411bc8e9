"""Chinese capability probes for comparing a quantized model with its unquantized source: cryptography-term
minimal pairs, word-boundary (segmentation) minimal pairs, and the same prompt in traditional and simplified script.

A minimal pair is a context with one correct continuation and wrong variants that differ only in the detail the
probe is about; a model "chooses" the continuation it gives the highest log-likelihood. The segmentation pairs are
the 南京市长江大桥 ambiguity carried over to cryptography: the same characters read with the domain's word boundary
(分组密码|分组长度) or a wrong one (分组|密码分组|长度), each reading made explicit by where 的 goes.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MinimalPair:
    family: str
    context: str
    correct: str
    wrong: tuple[str, ...]

    @property
    def candidates(self) -> tuple[str, ...]:
        """The correct continuation first, then the wrong ones."""
        return (self.correct, *self.wrong)


@dataclass(frozen=True)
class ScriptPair:
    """One prompt in simplified and in traditional characters (OpenCC t2s maps the second onto the first)."""

    simplified: str
    traditional: str


TERM_FAMILY = "crypto_term"
SEGMENTATION_FAMILY = "segmentation"


def _term(context: str, correct: str, *wrong: str) -> MinimalPair:
    return MinimalPair(TERM_FAMILY, context, correct, wrong)


def _segmentation(correct: str, *wrong: str) -> MinimalPair:
    # A neutral lead-in, so every reading is scored as the continuation of the same context.
    return MinimalPair(SEGMENTATION_FAMILY, "在密码学中，", correct, wrong)


TERM_PAIRS: tuple[MinimalPair, ...] = (
    _term("SM3 密码杂凑算法的输出长度为", "256 位", "128 位", "160 位", "512 位"),
    _term("SM4 分组密码的分组长度为", "128 位", "64 位", "256 位"),
    _term("AES 的分组长度固定为", "128 位", "64 位", "192 位"),
    _term("DES 的有效密钥长度为", "56 位", "64 位", "128 位"),
    _term("SHA-256 的摘要长度为", "256 位", "160 位", "512 位"),
    _term("SHA-1 的摘要长度为", "160 位", "128 位", "256 位"),
    _term("MD5 的摘要长度为", "128 位", "160 位", "256 位"),
    _term("RSA 的安全性基于", "大整数分解问题的困难性", "椭圆曲线离散对数问题的困难性", "格上最短向量问题的困难性"),
    _term("SM2 是一种基于", "椭圆曲线的公钥密码算法", "大整数分解的公钥密码算法", "格的公钥密码算法"),
    _term("ML-KEM（Kyber）的安全性基于", "格上的困难问题", "椭圆曲线离散对数问题", "大整数分解问题"),
    _term("祖冲之算法（ZUC）属于", "序列密码", "分组密码", "杂凑函数"),
    _term("SM9 是一种基于", "标识的密码算法", "口令的密码算法", "证书链的密码算法"),
    _term("数字签名由签名者使用自己的", "私钥生成", "公钥生成"),
    _term("Diffie-Hellman 协议主要用于", "密钥协商", "数字签名", "消息认证"),
)

SEGMENTATION_PAIRS: tuple[MinimalPair, ...] = (
    _segmentation("分组密码的分组长度为 128 位。", "分组的密码分组长度为 128 位。"),
    _segmentation("密钥交换协议的安全性依赖于困难问题。", "密钥的交换协议安全性依赖于困难问题。"),
    _segmentation("哈希函数的输出长度是固定的。", "哈希的函数输出长度是固定的。"),
    _segmentation("数字签名算法的参数需要公开。", "数字的签名算法参数需要公开。"),
    _segmentation("公钥基础设施的证书由认证机构签发。", "公钥基础的设施证书由认证机构签发。"),
    _segmentation("消息认证码的长度影响伪造概率。", "消息的认证码长度影响伪造概率。"),
)

MINIMAL_PAIRS: tuple[MinimalPair, ...] = TERM_PAIRS + SEGMENTATION_PAIRS

SCRIPT_PAIRS: tuple[ScriptPair, ...] = (
    ScriptPair("对称加密与非对称加密的区别是", "對稱加密與非對稱加密的區別是"),
    ScriptPair("数字签名可以保证消息的", "數字簽名可以保證消息的"),
    ScriptPair("椭圆曲线密码的优点在于", "橢圓曲線密碼的優點在於"),
    ScriptPair("哈希函数需要满足抗碰撞性，也就是说", "哈希函數需要滿足抗碰撞性，也就是說"),
    ScriptPair("量子计算机对公钥密码的威胁来自", "量子計算機對公鑰密碼的威脅來自"),
    ScriptPair("密钥管理包括密钥的生成、分发和", "密鑰管理包括密鑰的生成、分發和"),
)

# Questions for timing generation when no evaluation subset is given.
LATENCY_QUESTIONS: tuple[str, ...] = (
    "什么是分组密码？",
    "SM3 和 SHA-256 有什么区别？",
    "为什么 RSA 需要填充方案？",
)
