import itertools
import random

import pytest

from qft_core.config import SplitConfig
from qft_core.data.split import (
    SplitError,
    find_leaks,
    jaccard,
    jensen_shannon,
    missing_categories,
    near_duplicate_pairs,
    question_shingles,
    term_balanced_split,
)
from qft_core.records import ThinkingExample, ThinkingStructure

CATEGORIES = ["symmetric", "asymmetric", "hash_mac", "signature", "post_quantum", "chinese_standard"]
# Common CJK characters: random 20-character questions drawn from them share almost no trigrams.
POOL = [chr(code) for code in range(0x4E00, 0x4E00 + 600)]


def make_example(index: int, question: str, categories: list[str], difficulty: int) -> ThinkingExample:
    return ThinkingExample(
        id=f"ex{index:04d}",
        question=question,
        answer=f"答案 {index}",
        source_file="synthetic.md",
        source_line=index + 1,
        difficulty=difficulty,
        term_categories=sorted(categories),
        thinking=[ThinkingStructure(text=f"思考 {index}", children=[ThinkingStructure(text="子步骤")])],
    )


def synthetic_corpus(n: int = 300, clusters: int = 20, seed: int = 7) -> tuple[list[ThinkingExample], list[list[str]]]:
    """n examples over six categories; `clusters` groups of 2–5 near-duplicate questions (returned as id lists)."""
    rng = random.Random(seed)
    examples, cluster_ids = [], []
    while len(examples) < n:
        base = "".join(rng.choice(POOL) for _ in range(20))
        categories = rng.sample(CATEGORIES, rng.choice([1, 1, 2]))
        size = rng.randint(2, 5) if len(cluster_ids) < clusters else 1
        size = min(size, n - len(examples))
        variants = [base, base + "？", "请问" + base, base[:-1] + rng.choice(POOL), base + rng.choice(POOL)][:size]
        ids = []
        for variant in variants:
            example = make_example(len(examples), variant, categories, rng.randint(1, 5))
            examples.append(example)
            ids.append(example.id)
        if size > 1:
            cluster_ids.append(ids)
    return examples, cluster_ids


def brute_force_pairs(questions: list[str], config: SplitConfig) -> set[tuple[int, int]]:
    shingles = [question_shingles(q, config.ngram) for q in questions]
    return {
        (i, j)
        for i, j in itertools.combinations(range(len(questions)), 2)
        if jaccard(shingles[i], shingles[j]) >= config.near_duplicate_threshold
    }


def assignment(result) -> dict[str, str]:
    return {example.id: name for name, examples in result.splits().items() for example in examples}


@pytest.fixture(scope="module")
def corpus():
    return synthetic_corpus()


@pytest.fixture(scope="module")
def split(corpus):
    return term_balanced_split(corpus[0], SplitConfig())


def test_sizes_add_up_and_no_example_sits_in_two_splits(corpus, split):
    examples, _ = corpus
    ids = [example.id for examples_ in split.splits().values() for example in examples_]
    assert len(ids) == len(examples) == 300
    assert sorted(ids) == sorted(example.id for example in examples)
    assert split.report["sizes"] == {name: len(part) for name, part in split.splits().items()} | {"total": 300}
    for name, part in split.splits().items():
        assert all(example.split == name for example in part)


def test_thinking_examples_stay_whole(corpus, split):
    original = {example.id: example for example in corpus[0]}
    for example in split.train + split.validation + split.test:
        assert example.thinking == original[example.id].thinking
        assert example.question == original[example.id].question


def test_prefix_filter_finds_exactly_the_brute_force_pairs(corpus):
    questions = [example.question for example in corpus[0]]
    config = SplitConfig()
    found = near_duplicate_pairs(questions, config.ngram, config.near_duplicate_threshold)
    assert set(found) == brute_force_pairs(questions, config)
    assert len(found) > 0


def test_no_near_duplicate_pair_crosses_splits(corpus, split):
    examples, clusters = corpus
    where = assignment(split)
    questions = [example.question for example in examples]
    for i, j in brute_force_pairs(questions, SplitConfig()):
        assert where[examples[i].id] == where[examples[j].id]
    for cluster in clusters:
        assert len({where[example_id] for example_id in cluster}) == 1
    assert find_leaks(split, SplitConfig()) == []


def test_report_counts_the_injected_near_duplicate_groups(corpus, split):
    assert split.report["near_duplicate_groups"] == len(corpus[1]) == 20
    assert split.report["near_duplicate_examples"] == sum(len(cluster) for cluster in corpus[1])


def test_every_category_reaches_every_split(split):
    for part in split.splits().values():
        assert {c for example in part for c in example.term_categories} == set(CATEGORIES)
    assert missing_categories(split) == {}
    assert split.report["missing_categories"] == {}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_category_reaches_every_split_of_a_small_corpus(seed):
    # 40 examples give about 4 per split and category: plain stratification leaves gaps here that units must fill.
    examples, _ = synthetic_corpus(n=40, clusters=2, seed=seed)
    result = term_balanced_split(examples, SplitConfig())
    assert missing_categories(result) == {}
    assert find_leaks(result, SplitConfig()) == []
    assert sum(len(part) for part in result.splits().values()) == 40


def test_every_difficulty_reaches_every_split(split):
    for name, part in split.splits().items():
        assert {example.difficulty for example in part} == {1, 2, 3, 4, 5}
        assert split.report["difficulty_counts"][name] == {
            str(level): sum(example.difficulty == level for example in part) for level in range(1, 6)
        }


def test_ratios_are_kept_within_tolerance(split):
    config = SplitConfig()
    for name in ("train", "validation", "test"):
        assert abs(len(split.splits()[name]) / 300 - getattr(config, name)) <= 0.03


def test_category_distributions_stay_close(split):
    divergence = split.report["divergence"]
    assert set(divergence) == {"train_vs_validation", "train_vs_test"}
    assert all(0.0 <= value < 0.05 for value in divergence.values())
    rows = split.category_share_rows()
    assert [row["category"] for row in rows] == sorted(CATEGORIES)


def test_same_seed_same_split_and_input_order_does_not_matter(corpus, split):
    shuffled = list(corpus[0])
    random.Random(3).shuffle(shuffled)
    again = term_balanced_split(shuffled, SplitConfig())
    assert assignment(again) == assignment(split)
    assert [example.id for example in again.train] == [example.id for example in shuffled if assignment(split)[example.id] == "train"]


def test_different_seed_gives_a_different_split(corpus, split):
    other = term_balanced_split(corpus[0], SplitConfig(seed=43))
    assert assignment(other) != assignment(split)
    assert find_leaks(other, SplitConfig()) == []


def test_balanced_dataset_raises_no_warnings(split):
    assert split.report["warnings"] == []


def test_tiny_dataset_warns_about_overfitting_risk():
    examples = [make_example(i, f"问题{i}关于算法{'甲乙丙丁戊'[i]}的性质", ["symmetric"] if i else ["hash_mac"], 2) for i in range(5)]
    result = term_balanced_split(examples, SplitConfig(min_split_size=10))
    warnings = result.report["warnings"]
    assert sum(len(part) for part in result.splits().values()) == 5
    assert any(w.startswith("train has") and "min_split_size 10" in w for w in warnings)
    assert any(w.startswith("test has") for w in warnings)
    assert any("category 'hash_mac' is missing from" in w for w in warnings)
    assert "category 'hash_mac' has only 1 examples: too few to expect one in every split (needs at least 10 at these ratios)" in warnings
    assert "category 'symmetric' has only 4 examples: too few to expect one in every split (needs at least 10 at these ratios)" in warnings


def test_a_zero_validation_ratio_leaves_validation_empty_without_warnings(corpus):
    result = term_balanced_split(corpus[0], SplitConfig(train=0.8, validation=0.0, test=0.2))
    assert result.validation == []
    assert abs(len(result.test) / 300 - 0.2) <= 0.03
    assert not any("validation" in w for w in result.report["warnings"])


def test_find_leaks_reports_near_duplicates_and_repeated_ids_across_splits(corpus, split):
    examples, clusters = corpus
    where = assignment(split)
    moved_id = clusters[0][0]
    partner = clusters[0][1]
    target = next(name for name in ("train", "validation", "test") if name != where[moved_id])
    lists = {name: [e for e in part if e.id != moved_id] for name, part in split.splits().items()}
    lists[target].append(next(e for e in examples if e.id == moved_id))
    leaks = find_leaks(lists, SplitConfig())
    assert (min(moved_id, partner), max(moved_id, partner)) in leaks
    assert all(moved_id in pair for pair in leaks)
    duplicated = [split.train, split.validation + [split.train[0]], split.test]
    assert (split.train[0].id, split.train[0].id) in find_leaks(duplicated, SplitConfig())


def test_missing_categories_names_split_and_category():
    a = make_example(0, "甲", ["symmetric", "hash_mac"], 1)
    b = make_example(1, "乙", ["symmetric"], 1)
    c = make_example(2, "丙", ["signature"], 1)
    assert missing_categories({"train": [a], "validation": [b], "test": [c]}) == {
        "validation": ["hash_mac", "signature"],
        "test": ["hash_mac", "symmetric"],
        "train": ["signature"],
    }


def test_jensen_shannon_of_disjoint_distributions_is_one_bit_and_of_equal_ones_zero():
    assert jensen_shannon([1.0, 0.0], [0.0, 1.0]) == pytest.approx(1.0)
    assert jensen_shannon([0.25, 0.75], [0.25, 0.75]) == pytest.approx(0.0)
    # Hand-computed: p=(1/2,1/2), q=(1,0), m=(3/4,1/4): ½[½log2(2/3)+½log2(2)] + ½log2(4/3) = 0.311278
    assert jensen_shannon([0.5, 0.5], [1.0, 0.0]) == pytest.approx(0.311278, abs=1e-6)


def test_repeated_ids_are_refused():
    example = make_example(0, "甲乙丙", ["symmetric"], 1)
    with pytest.raises(SplitError, match="ex0000"):
        term_balanced_split([example, example], SplitConfig())


def test_no_examples_give_three_empty_splits_and_a_size_warning():
    result = term_balanced_split([], SplitConfig())
    assert result.splits() == {"train": [], "validation": [], "test": []}
    assert result.report["sizes"]["total"] == 0
    assert result.report["divergence"] == {"train_vs_validation": None, "train_vs_test": None}
    assert len(result.report["warnings"]) == 3
