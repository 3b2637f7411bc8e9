from collections import Counter

import pytest

from qft_core.evaluate.experts import (
    AnnotationTask,
    AssignmentError,
    Expert,
    ExpertError,
    GoldItem,
    Rating,
    RubricError,
    RubricScore,
    check_profile,
    consensus,
    gold_set_hash,
    plan_assignments,
    read_eval_outputs,
    select_gold_items,
)


def make_task(task_id: int, category: str | None = "symmetric", term_categories: list[str] | None = None):
    return AnnotationTask(
        id=task_id,
        example_id=f"ex{task_id:03d}",
        model_id="qwen3-tiny",
        question=f"问题 {task_id}",
        reference_answer=f"参考答案 {task_id}",
        predicted_reasoning="先看定义。",
        predicted_answer=f"模型答案 {task_id}",
        category=category,
        term_categories=term_categories or [],
    )


def make_expert(expert_id: int, role: str = "annotator", specialities: list[str] | None = None) -> Expert:
    email = f"e{expert_id}@example.org"
    return Expert(id=expert_id, name=f"专家{expert_id}", email=email, role=role, specialities=specialities or [])


def rating(task_id: int, expert_id: int, accuracy: int, completeness: int, reasoning: int, language: int) -> Rating:
    return Rating(task_id, expert_id, RubricScore(accuracy, completeness, reasoning, language))


@pytest.mark.parametrize("bad", [0, 6, -1])
def test_rubric_rejects_scores_outside_one_to_five_naming_the_dimension(bad: int) -> None:
    with pytest.raises(RubricError, match=rf"^completeness must be an integer from 1 to 5, got {bad}$"):
        RubricScore(accuracy=3, completeness=bad, reasoning=3, language=3)


@pytest.mark.parametrize("bad", [4.0, 4.5, "4", True, None])
def test_rubric_rejects_scores_that_are_not_integers(bad: object) -> None:
    with pytest.raises(RubricError, match="^language must be an integer"):
        RubricScore(accuracy=3, completeness=3, reasoning=3, language=bad)


def test_rubric_accepts_both_ends_of_the_scale() -> None:
    score = RubricScore(accuracy=1, completeness=5, reasoning=1, language=5, comment="边界")
    assert score.values() == {"accuracy": 1, "completeness": 5, "reasoning": 1, "language": 5}


def test_profile_sorts_and_deduplicates_specialities() -> None:
    assert check_profile("王芳", "wf@example.org", "reviewer", ["symmetric", "hash_mac", " symmetric", ""]) == [
        "hash_mac",
        "symmetric",
    ]


@pytest.mark.parametrize(
    ("name", "email", "role", "specialities", "message"),
    [
        ("王芳", "wf@example.org", "owner", [], "unknown role 'owner'"),
        ("王芳", "wf@example.org", "annotator", ["quantum_magic"], "unknown speciality quantum_magic"),
        ("王芳", "not-an-email", "annotator", [], "'not-an-email' is not an email address"),
        ("  ", "wf@example.org", "annotator", [], "an expert needs a name"),
    ],
)
def test_profile_rejects_bad_fields_with_one_line_message(name, email, role, specialities, message) -> None:
    with pytest.raises(ExpertError, match=message) as error:
        check_profile(name, email, role, specialities)
    assert "\n" not in str(error.value)


def test_round_robin_gives_every_task_distinct_experts_and_even_load() -> None:
    tasks = [make_task(task_id) for task_id in range(1, 7)]
    experts = [make_expert(expert_id) for expert_id in (1, 2, 3)]
    planned = plan_assignments(tasks, experts, [], per_item=2)
    assert len(planned) == 12 and len(set(planned)) == 12
    per_task = Counter(task_id for task_id, _ in planned)
    assert per_task == {task_id: 2 for task_id in range(1, 7)}
    assert Counter(expert_id for _, expert_id in planned) == {1: 4, 2: 4, 3: 4}
    # In turn: 1+2, 3+1, 2+3, ...
    assert planned[:6] == [(1, 1), (1, 2), (2, 3), (2, 1), (3, 2), (3, 3)]


def test_assignment_tops_up_existing_pairs_and_never_repeats_an_expert() -> None:
    tasks = [make_task(1), make_task(2)]
    experts = [make_expert(expert_id) for expert_id in (1, 2, 3)]
    existing = [(1, 1), (1, 2), (2, 3)]
    planned = plan_assignments(tasks, experts, existing, per_item=3)
    everything = existing + planned
    assert len(everything) == len(set(everything)) == 6
    assert sorted(planned) == [(1, 3), (2, 1), (2, 2)]
    assert plan_assignments(tasks, experts, everything, per_item=3) == []
    assert plan_assignments(tasks, experts, everything, per_item=2) == []


def test_speciality_strategy_puts_experts_of_the_task_category_first() -> None:
    tasks = [make_task(1, "hash_mac"), make_task(2, None, ["post_quantum"]), make_task(3, "classical")]
    experts = [make_expert(1, specialities=["symmetric"]), make_expert(2, specialities=["hash_mac", "post_quantum"])]
    experts.append(make_expert(3, specialities=["post_quantum"]))
    planned = plan_assignments(tasks, experts, [], per_item=1, strategy="speciality")
    # Task 3 has no specialist: the least-loaded expert takes it.
    assert planned == [(1, 2), (2, 3), (3, 1)]
    assert plan_assignments(tasks, experts, [], per_item=2, strategy="speciality")[:2] == [(1, 2), (1, 1)]


def test_admins_are_never_assigned_and_too_few_experts_is_an_error() -> None:
    experts = [make_expert(1), make_expert(2, role="admin"), make_expert(3, role="reviewer")]
    planned = plan_assignments([make_task(1), make_task(2)], experts, [], per_item=2)
    assert {expert_id for _, expert_id in planned} == {1, 3}
    with pytest.raises(AssignmentError, match="3 experts per item needs at least 3 annotators or reviewers, found 2"):
        plan_assignments([make_task(1)], experts, [], per_item=3)
    with pytest.raises(AssignmentError, match="at least 1"):
        plan_assignments([make_task(1)], experts, [], per_item=0)


def test_consensus_takes_medians_and_flags_a_spread_of_two_points() -> None:
    ratings = [
        rating(1, 1, 4, 5, 4, 3),
        rating(1, 2, 5, 4, 4, 4),
        rating(1, 3, 4, 4, 5, 5),
        rating(2, 1, 2, 4, 4, 4),
        rating(2, 2, 4, 4, 3, 4),
    ]
    first, second = consensus(ratings)
    assert first.medians == {"accuracy": 4.0, "completeness": 4.0, "reasoning": 4.0, "language": 4.0}
    assert first.spreads == {"accuracy": 1, "completeness": 1, "reasoning": 1, "language": 2}
    assert first.raters == 3 and first.disputed == ("language",) and first.flagged
    assert second.medians == {"accuracy": 3.0, "completeness": 4.0, "reasoning": 3.5, "language": 4.0}
    assert second.disputed == ("accuracy",)
    assert not consensus(ratings, flag_spread=3)[0].flagged


def test_gold_selection_needs_raters_no_flag_and_every_median_at_the_bar() -> None:
    tasks = {task_id: make_task(task_id) for task_id in (1, 2, 3, 4)}
    ratings = [
        rating(1, 1, 5, 4, 4, 5), rating(1, 2, 4, 4, 5, 5),  # good, agreed
        rating(2, 1, 5, 5, 5, 5),  # good but one rater
        rating(3, 1, 5, 5, 5, 3), rating(3, 2, 5, 5, 5, 5),  # language disputed (spread 2)
        rating(4, 1, 4, 3, 4, 4), rating(4, 2, 4, 4, 4, 4),  # completeness median 3.5
    ]  # fmt: skip
    items = select_gold_items(tasks, consensus(ratings), min_raters=2, min_score=4)
    assert [item.task_id for item in items] == [1]
    assert items[0].scores == {"accuracy": 4.5, "completeness": 4.0, "reasoning": 4.5, "language": 5.0}
    assert items[0].example_id == "ex001" and items[0].raters == 2
    assert [item.task_id for item in select_gold_items(tasks, consensus(ratings), 1, 4)] == [1, 2]
    assert [item.task_id for item in select_gold_items(tasks, consensus(ratings), 2, 3.5)] == [1, 4]


def test_gold_hash_depends_on_content_only() -> None:
    item = GoldItem(**make_task(1).model_dump(exclude={"id"}), task_id=1, raters=2, scores={"accuracy": 4.0})
    same = GoldItem.model_validate_json(item.model_dump_json())
    assert gold_set_hash([item]) == gold_set_hash([same])
    assert len(gold_set_hash([item])) == 64
    changed = item.model_copy(update={"scores": {"accuracy": 4.5}})
    assert gold_set_hash([changed]) != gold_set_hash([item])


def test_reading_eval_outputs_names_the_bad_line(tmp_path) -> None:
    path = tmp_path / "outputs.jsonl"
    good = make_task(1).model_dump_json(exclude={"id"})
    path.write_text(good + "\n\n" + '{"example_id": "ex2", "model_id": "m"}\n', encoding="utf-8")
    with pytest.raises(ExpertError, match=r"outputs.jsonl:3: question: Field required"):
        read_eval_outputs(path)
    path.write_text(good + "\n", encoding="utf-8")
    assert read_eval_outputs(path)[0].predicted_answer == "模型答案 1"
    with pytest.raises(ExpertError, match="cannot read evaluation outputs"):
        read_eval_outputs(tmp_path / "missing.jsonl")
