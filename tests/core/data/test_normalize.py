"""Text normalisation: traditional to simplified, zero-width removal, full-width ASCII forms to ASCII."""

from __future__ import annotations

from qft_core.data.normalize import count_traditional, remove_zero_width, fullwidth_to_ascii, to_simplified


def test_traditional_text_becomes_simplified() -> None:
    assert to_simplified("密碼學與資訊安全") == "密码学与资讯安全"


def test_simplified_text_is_unchanged() -> None:
    text = "对称加密使用相同的密钥，显著快于公钥加密。"
    assert to_simplified(text) == text
    assert count_traditional(text) == 0


def test_count_traditional_counts_changed_characters() -> None:
    # 碼 學 與 資 訊
    assert count_traditional("密碼學與資訊安全") == 5


def test_zero_width_characters_are_removed_and_counted() -> None:
    assert remove_zero_width("零\u200b宽\u200c字\u200d符\u2060与\ufeff") == ("零宽字符与", 5)
    assert remove_zero_width("没有") == ("没有", 0)


def test_fullwidth_ascii_forms_become_ascii_one_character_for_one() -> None:
    text = "Ｑ：ＡＥＳ－１２８＃＊＜ｔｈｉｎｋ／＞\u3000中文，。"
    converted = fullwidth_to_ascii(text)
    assert converted == "Q:AES-128#*<think/> 中文,。"
    assert len(converted) == len(text)


def test_ascii_folding_keeps_cjk_and_ascii() -> None:
    text = "AES 的分组长度是 128 位。"
    assert fullwidth_to_ascii(text) == text
