"""Reasoning written by a model: the accept/reject check on hand-made reasoning, the endpoint writer against qft's
own OpenAI-compatible server (over real HTTP, the embedded tiny model), a refused connection, the local model
writer, and the `model` marking from parse through annotate and split to the exports."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence

import pytest

from qft_core.cli import main
from qft_core.config import ModelConfig, PathsConfig, QftConfig, ReasoningConfig
from qft_core.data.annotate import annotate_examples, reasoning_account
from qft_core.data.export import EXPORT_FORMATS, export_splits
from qft_core.data.parse import parse_paths
from qft_core.data.split import term_balanced_split
from qft_core.data.terms import load_default_dictionary
from qft_core.evaluate.facts import load_default_fact_base
from qft_core.evaluate.reasoning_writers import EndpointWriter, ModelWriter, WriteFailed, WriterSetupError
from qft_core.evaluate.written_reasoning import check_written_reasoning, reasoning_prompt, write_missing_reasoning
from qft_core.model.registry import ensure_model_dir, resolve_model
from qft_core.package.bundle import build_package
from qft_core.package.model_card import ModelCardInfo
from qft_core.records import ThinkingExample, ThinkingStructure, read_parquet, write_parquet
from qft_core.serve.served_model import ServedModel
from qft_core.serve.server import ServerSettings, create_app
from tests.core.serve.uvicorn_thread import running

QUESTION = "AES-256 的密钥长度、分组长度和轮数各是多少？"
ANSWER = "AES-256 的密钥长度是 256 位，分组长度是 128 位，共进行 14 轮变换。AES-128 为 10 轮，AES-192 为 12 轮。"
CONSISTENT = (
    "题目问的是 AES-256 的三个参数，需要分清密钥长度、分组长度和轮数。\n\n"
    "AES 是 Rijndael 的标准化版本，由 FIPS 197 规定，分组长度固定，不随密钥变化；密钥越长，密钥扩展要产生的"
    "轮密钥越多，为了让每一位密钥都充分扩散，轮数也要相应增加。\n\n"
    "FIPS 197 给出的轮数是 Nr = Nk + 6，其中 Nk 是以 32 位字计的密钥长度：256 位密钥对应 Nk = 8，于是 Nr = 14。\n\n"
    "因此，AES-256 用 256 位密钥、128 位分组，做 14 轮变换。"
)
MODEL_ID = "qft-reasoning-writer"
API_KEY = "writer-key"
KEY_VARIABLE = "QFT_TEST_REASONING_KEY"


@pytest.fixture(scope="module")
def dictionary():
    return load_default_dictionary()


@pytest.fixture(scope="module")
def facts():
    return load_default_fact_base()


def bare(index: int, question: str = QUESTION, answer: str = ANSWER) -> ThinkingExample:
    return ThinkingExample(
        id=f"bare{index}", question=question, answer=answer, source_file="t.md", source_line=index + 1,
        thinking_origin="none",
    )


EXPERT = ThinkingExample(
    id="expert", question="SM3 的输出是多少位？", answer="SM3 输出 256 位杂凑值。", source_file="t.md", source_line=40,
    thinking=[ThinkingStructure(text="SM3 是国密杂凑算法，按 GB/T 32905 输出 256 位，因此答案是 256 位。")],
)


# ---- the check ---------------------------------------------------------------------------------------------


def test_consistent_reasoning_that_works_toward_the_answer_is_accepted(dictionary, facts):
    check = check_written_reasoning(CONSISTENT, ANSWER, dictionary, facts, ReasoningConfig())
    assert check.accepted and check.problems == ()
    assert check.quality == 1.0


def test_reasoning_with_a_number_that_contradicts_the_answer_is_refused_naming_it(dictionary, facts):
    wrong = CONSISTENT.replace("于是 Nr = 14", "于是 Nr = 10").replace("做 14 轮变换", "做 10 轮变换")
    check = check_written_reasoning(wrong, ANSWER, dictionary, facts, ReasoningConfig())
    assert not check.accepted
    assert check.problems == (
        "contradicts the answer: aes_256 rounds: reasoning 10, answer 14",
        "contradicts the fact base: aes_256 rounds: stated 10, fact 14 (FIPS 197 §5, Figure 4 (Nr = 14))",
    )


def test_reasoning_that_only_restates_the_answer_is_refused(dictionary, facts):
    restated = f"首先，{ANSWER}\n\n因此，{ANSWER}"
    check = check_written_reasoning(restated, ANSWER, dictionary, facts, ReasoningConfig())
    # "首先，" and "因此，" are all it adds: 4 of its 104 letters and digits.
    assert check.problems == (
        "quality 0.66 below reasoning.min_quality 0.70",
        "restates the answer: 4% of it is not copied from the answer (reasoning.min_new_share 50%)",
    )


def test_empty_and_tagged_reasoning_are_refused(dictionary, facts):
    assert check_written_reasoning("  \n", ANSWER, dictionary, facts, ReasoningConfig()).problems == ("empty",)
    tagged = check_written_reasoning(f"<think>{CONSISTENT}", ANSWER, dictionary, facts, ReasoningConfig())
    assert tagged.problems[0] == "contains a <think> or </think> tag"


def test_the_prompt_gives_the_question_and_the_expert_answer():
    prompt = reasoning_prompt(f" {QUESTION}\n", ANSWER)
    assert f"问题：{QUESTION}\n\n专家答案：{ANSWER}" in prompt and "推理过程" in prompt


# ---- the endpoint writer against qft's own server ----------------------------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> ServedModel:
    tiny = ensure_model_dir(resolve_model(ModelConfig(name="qwen3-tiny"), PathsConfig()))
    metadata = {"config": QftConfig().model_dump(mode="json"), "data_hash": "test", "metrics": {}}
    out = tmp_path_factory.mktemp("served") / MODEL_ID
    package = build_package(tiny, out, metadata=metadata, model_card=ModelCardInfo(MODEL_ID, "qwen3-tiny"))
    return ServedModel.load(package, device="cpu")


@pytest.fixture(scope="module")
def endpoint(served: ServedModel) -> Iterator[str]:
    with running(create_app(served, ServerSettings(api_key=API_KEY, max_tokens_limit=64))) as url:
        yield f"{url}/v1"


def endpoint_config(url: str, **reasoning) -> QftConfig:
    return QftConfig.model_validate({"reasoning": {
        "writer": "endpoint", "endpoint_url": url, "endpoint_model": MODEL_ID, "api_key_env": KEY_VARIABLE,
        "max_new_tokens": 24, "thinking_budget": 8, "concurrency": 2, **reasoning,
    }})


def test_the_endpoint_writes_through_qfts_server_and_the_tiny_models_noise_is_refused_with_reasons(
    endpoint: str, dictionary, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv(KEY_VARIABLE, API_KEY)
    examples = [bare(0), EXPERT, bare(1, "SM3 的输出长度是多少？", "SM3 输出 256 位杂凑值。")]
    written = write_missing_reasoning(examples, endpoint_config(endpoint), dictionary)

    assert written.failures == [] and written.writer == f"{MODEL_ID} at {endpoint}"
    assert written.examples[1] == EXPERT
    for example in (written.examples[0], written.examples[2]):
        # Random weights write noise: it reaches the server and back, and the check refuses it, saying why.
        assert example.thinking == [] and example.thinking_writer == written.writer
        assert example.thinking_rejected and not example.thinking_rejected.startswith("writer failed")
    annotated = annotate_examples(written.examples, dictionary, QftConfig().data)
    assert [example.thinking_origin for example in annotated] == ["template", "expert", "template"]
    assert reasoning_account(annotated) == {"expert": 1, "model": 0, "template": 2, "none": 0, "rejected": 2}


def test_a_wrong_api_key_fails_each_request_naming_the_url(endpoint: str):
    writer = EndpointWriter(endpoint, MODEL_ID, api_key="wrong", max_tokens=8)
    [reply] = writer.write(["SM2"])
    assert isinstance(reply, WriteFailed)
    assert reply.message.startswith(f"{endpoint}/chat/completions: HTTP 401 Unauthorized: ")


def test_an_unset_key_variable_stops_before_any_request_naming_the_key(endpoint: str, dictionary, monkeypatch):
    monkeypatch.delenv(KEY_VARIABLE, raising=False)
    with pytest.raises(WriterSetupError, match=f"reasoning.api_key_env names {KEY_VARIABLE}, which is not set"):
        write_missing_reasoning([bare(0)], endpoint_config(endpoint), dictionary)


def test_a_refused_connection_is_one_failure_naming_the_url_and_every_pair_falls_back(dictionary, tmp_path, capsys):
    url = "http://127.0.0.1:9/v1"  # the discard port: nothing listens there
    examples = [bare(index) for index in range(5)] + [EXPERT]
    config = endpoint_config(url, api_key_env=None)
    written = write_missing_reasoning(examples, config, dictionary)

    message = f"{url}/chat/completions: cannot connect ([Errno 111] Connection refused)"
    assert written.failures == [message]
    annotated = annotate_examples(written.examples, dictionary, config.data)
    assert [example.id for example in annotated] == [example.id for example in examples]
    assert [example.thinking_rejected for example in annotated[:5]] == [f"writer failed: {message}"] * 5
    assert reasoning_account(annotated) == {"expert": 1, "model": 0, "template": 5, "none": 0, "rejected": 5}

    # The command line says the same: the account, and the failure on stderr.
    config_file = tmp_path / "qft.yaml"
    config_file.write_text(f"reasoning:\n  writer: endpoint\n  endpoint_url: {url}\n  endpoint_model: m\n")
    source = tmp_path / "parsed.parquet"
    write_parquet(examples, ThinkingExample, source)
    assert main(["--config", str(config_file), "annotate", str(source), "--out", str(tmp_path / "out.parquet")]) == 0
    out, err = capsys.readouterr()
    assert "reasoning: 1 expert, 0 model-written (writer: m at http://127.0.0.1:9/v1), 5 template, 0 none; " \
           "5 model-written refused (template instead)" in out
    assert f"qft annotate: reasoning writer failed: {url}/chat/completions: cannot connect" in err
    assert len(read_parquet(tmp_path / "out.parquet", ThinkingExample)) == 6


# ---- the model being fine-tuned as the writer --------------------------------------------------------------


def test_the_local_model_writes_one_reply_per_prompt_with_qfts_generation():
    config = QftConfig.model_validate({"model": {"device": "cpu"}, "reasoning": {
        "writer": "model", "max_new_tokens": 16, "thinking_budget": 4, "batch_size": 2,
    }})
    writer = ModelWriter(config)
    replies = writer.write([reasoning_prompt(QUESTION, ANSWER), reasoning_prompt("SM3 是什么？", "国密杂凑算法。")])
    assert writer.name == "qwen3-tiny"
    assert len(replies) == 2 and all(isinstance(reply, str) for reply in replies)


# ---- the marking from parse to export ----------------------------------------------------------------------


class HandWrittenReasoning:
    """A writer whose replies are set by the test: the tiny model cannot write reasoning that passes the checks."""

    name = "hand-written"

    def __init__(self, replies: dict[str, str]) -> None:
        self.replies = replies

    def write(self, prompts: Sequence[str], progress=None) -> list[str | WriteFailed]:
        return [next(reply for question, reply in self.replies.items() if question in prompt) for prompt in prompts]


def test_model_written_reasoning_stays_marked_through_parse_annotate_split_and_export(dictionary, tmp_path):
    corpus = tmp_path / "corpus.md"
    pairs = [f"问：{QUESTION}\n答：{ANSWER}\n"]
    pairs += [f"问：第 {index} 个问题：SM4 的分组长度是多少？\n答：SM4 的分组长度是 128 位（第 {index} 题）。\n"
              for index in range(11)]
    corpus.write_text("\n".join(pairs), encoding="utf-8")
    config = QftConfig.model_validate({"split": {"min_split_size": 1}})
    parsed = parse_paths([corpus], config.data).examples
    writer = HandWrittenReasoning({QUESTION: CONSISTENT, "SM4": "SM4 的分组长度是 128 位。"})

    written = write_missing_reasoning(parsed, config, dictionary, writer=writer)
    annotated = annotate_examples(written.examples, dictionary, config.data)
    assert reasoning_account(annotated) == {"expert": 0, "model": 1, "template": 11, "none": 0, "rejected": 11}
    [marked] = [example for example in annotated if example.thinking_origin == "model"]
    assert marked.question == QUESTION and marked.reasoning == CONSISTENT
    assert marked.thinking_writer == "hand-written" and marked.thinking_rejected is None

    result = term_balanced_split(annotated, config.split)
    [split_name] = [name for name, examples in result.splits().items() if marked.id in {e.id for e in examples}]
    assert result.report["reasoning_origins"][split_name]["model"] == 1
    assert result.data_summary()["reasoning_origins"] == reasoning_account(annotated)
    write_parquet(result.splits()[split_name], ThinkingExample, tmp_path / "split.parquet")
    [reloaded] = [e for e in read_parquet(tmp_path / "split.parquet", ThinkingExample) if e.id == marked.id]
    assert (reloaded.thinking_origin, reloaded.thinking_writer) == ("model", "hand-written")
    for dataset_format in EXPORT_FORMATS:
        export = export_splits(result.splits(), dataset_format, tmp_path / dataset_format)
        rows = [json.loads(line) for path in export.files if path.suffix == ".jsonl"
                for line in path.read_text(encoding="utf-8").splitlines()]
        [row] = [row for row in rows if row["id"] == marked.id]
        assert (row["thinking_origin"], row["thinking_writer"]) == ("model", "hand-written")
        assert {row["thinking_origin"] for row in rows if row["id"] != marked.id} == {"template"}


def test_examples_written_before_model_reasoning_read_their_template_origin():
    old = ThinkingExample.model_validate({**bare(0).model_dump(), "thinking_origin": "generated"})
    assert old.thinking_origin == "template"
