from pathlib import Path

import pytest
import yaml

GOOD_PAIR = """### Q: {question}
<thinking>
{term} 是本题的关键概念，需要先回忆它的定义。
</thinking>
### A: {term} 的作用是保护数据的机密性或完整性，这是第 {n} 个示例。
"""

TERMS = ["AES", "SM4", "RSA", "SM2", "SHA-256", "SM3", "HMAC", "ECDSA", "TLS 1.3", "Diffie-Hellman"]


def write_corpus(folder: Path, pairs: int, broken: int = 0) -> None:
    """A small corpus of distinct pairs (and some unanswerable questions) spread over a few files."""
    folder.mkdir(parents=True, exist_ok=True)
    chunks = [
        GOOD_PAIR.format(question=f"第 {n} 题：请说明 {TERMS[n % len(TERMS)]} 在场景 {n * 7919 % 1000} 中的用途？", term=TERMS[n % len(TERMS)], n=n)
        for n in range(pairs)
    ]
    chunks += [f"问：没有答案的问题 {n} 关于 {TERMS[n % len(TERMS)]}？\n" for n in range(broken)]
    for index in range(4):
        (folder / f"part{index}.md").write_text("\n".join(chunks[index::4]), encoding="utf-8")


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A config file whose corpus and artifacts live in tmp, and a private Dagster home."""
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    corpus = tmp_path / "corpus"
    config = {
        "paths": {"corpus_dir": str(corpus), "artifacts_dir": str(tmp_path / "artifacts")},
        "split": {"min_split_size": 2},
    }
    config_file = tmp_path / "qft.yaml"
    config_file.write_text(yaml.safe_dump(config), encoding="utf-8")
    return {"root": tmp_path, "corpus": corpus, "config_file": str(config_file)}
