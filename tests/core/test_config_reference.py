from pydantic import Field

from qft_core.config import QftConfig, Section
from qft_core.config_reference import (
    FALLBACK_NOTES,
    REFERENCE_FILE,
    REGENERATE,
    _source_comments,
    _type_name,
    explanation,
    render_reference,
)

KEYS = [(section, key) for section, info in QftConfig.model_fields.items() for key in info.annotation.model_fields]


def test_committed_reference_equals_the_generated_one():
    assert REFERENCE_FILE.read_text(encoding="utf-8") == render_reference(), f"docs/configuration.md is stale: run `{REGENERATE}`"


def test_every_key_has_a_row_with_its_default():
    text = render_reference()
    for section, key in KEYS:
        assert f"| `{section}.{key}` |" in text
    assert "| `training.master_port` | integer | `29511` | ≥ 1, ≤ 65535 |" in text
    assert "| `model.dtype` | one of `auto`, `float32`, `bfloat16`, `float16` | `auto` |  |" in text
    assert "| `training.max_steps` | integer or empty | empty (`null`) | ≥ 1 |" in text


def test_every_key_is_explained():
    assert [f"{section}.{key}" for section, key in KEYS if not explanation(section, key)] == []


def test_fallback_notes_only_cover_keys_config_py_leaves_undocumented():
    known = set(KEYS)
    for section, key in FALLBACK_NOTES:
        assert (section, key) in known, f"{section}.{key} is no configuration key"
        model = QftConfig.model_fields[section].annotation
        documented = model.model_fields[key].description or _source_comments(model).get(key)
        assert not documented, f"{section}.{key} is documented in config.py: drop its fallback note"


class _Example(Section):
    # First line of the meaning,
    # and its second line.
    commented: int = 1
    described: str = Field("x", description="From the Field.")
    plain: list[str] = Field(default_factory=list)


def test_comments_above_a_field_are_its_meaning_and_end_at_the_next_field():
    assert _source_comments(_Example) == {"commented": "First line of the meaning, and its second line."}


def test_types_read_as_words():
    assert _type_name(int | None) == "integer or empty"
    assert _type_name(list[str]) == "list of text"
    assert _type_name(bool) == "true/false"
