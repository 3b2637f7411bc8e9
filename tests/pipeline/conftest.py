import os
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


# Small enough that the whole graph materializes in a test; every key is an ordinary qft setting.
TINY_RUN = {
    "split": {"min_split_size": 2},
    "training": {"max_steps": 2, "global_batch_size": 2, "checkpoint_every": 1, "eval_every": 1},
    "eval": {"max_examples": 4, "max_new_tokens": 16, "thinking_budget": 8, "bootstrap_samples": 10},
    "quant": {"formats": ["int8"], "calibration_samples": 2},
}


@pytest.fixture(scope="session")
def whole_graph(tmp_path_factory):
    """One successful run of the whole graph over a small corpus, in a private Dagster home: {"home", "outcome"}
    (the runner's `RunOutcome`). Session-wide: the UI test and the whole-graph test read the same run."""
    root = tmp_path_factory.mktemp("whole-graph")
    home = root / "dagster_home"
    home.mkdir()
    # nux off: Dagster's first-visit newsletter dialog would cover the page.
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\nnux:\n  enabled: false\n", encoding="utf-8")
    write_corpus(root / "corpus", pairs=40)
    config = {**TINY_RUN, "paths": {"corpus_dir": str(root / "corpus"), "artifacts_dir": str(root / "artifacts")}}
    config_file = root / "qft.yaml"
    config_file.write_text(yaml.safe_dump(config), encoding="utf-8")

    from qft_pipeline.runner import materialize_graph

    previous = os.environ.get("DAGSTER_HOME")
    os.environ["DAGSTER_HOME"] = str(home)
    try:
        outcome = materialize_graph(config_file=str(config_file))
    finally:
        if previous is None:
            os.environ.pop("DAGSTER_HOME")
        else:
            os.environ["DAGSTER_HOME"] = previous
    assert outcome.success, outcome.failures
    return {"home": home, "outcome": outcome}
