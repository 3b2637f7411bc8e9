"""Time every text metric on an evaluation-sized set: by default 1,000 pairs of 3,000-character texts.

    uv run python bench/bench_metrics.py [--pairs 1000] [--chars 3000] [--workers 1 2] [--profile]

Texts are built from the bundled corpus: each reference is a random sample of corpus sentences, and each
prediction reuses about half of its reference's sentences (so the subsequences are realistic) behind a
reasoning block of a third of its length. Startup (loading the dictionary, jieba, the misconception list)
is timed separately from scoring. Prints timings; asserts nothing.

Speed
-----
Target: every metric of 1,000 such pairs in under 10 s wall with 2 workers on a 2-core machine.

    uv run python bench/bench_metrics.py --workers 2                        # the target
    uv run python bench/bench_metrics.py --pairs 100 --workers 1 --profile  # where the time goes

Other processes stretch the wall times (the load average is printed): compare runs by CPU time per pair.
Measured 2026-11-26 on the idle 2-core development machine (AMD EPYC, load average 1.0 at the start) with
`--workers 2`:

    startup (dictionary, jieba, 52 misconceptions)    1.02 s
    1000 pairs, 6.00 M characters
    score_many workers=2                              6.69 s wall, 12.97 s CPU (13.0 ms CPU per pair, 149 pairs/s)
    aggregate, 60 metrics x 1000 bootstrap samples    0.46 s
    whole process, Python imports included (`time`)   9.44 s wall

The target is met: 8.2 s for startup, scoring and aggregation, 9.4 s with the interpreter's start. (Scoring
cost 31 ms CPU per pair before segmentation moved to jieba_fast and the term, width and punctuation scans to
regexes.) Those numbers are jieba_fast's; with jieba itself (2026-12-07, runs alternated with the old tree on a
machine at load average 7 to 16) scoring took 6-10 % more CPU per pair, so about 14 ms per pair and 8.7 s in all
are projected for the idle machine, not measured: docs/evaluation.md has the table. Where the time goes, from an earlier `--profile` run under load, at 15 ms CPU per pair: jieba
segmentation of answer and reference 5 ms, term search 2.5 ms, key points with quantities 1.5 ms, reasoning
score 1.5 ms, misconceptions 1.3 ms.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import random
import re
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from qft_core.data.terms import load_default_dictionary  # noqa: E402
from qft_core.evaluate.bootstrap import aggregate  # noqa: E402
from qft_core.evaluate.facts import load_default_fact_base  # noqa: E402
from qft_core.evaluate.metrics import score_many  # noqa: E402
from qft_core.evaluate.misconceptions import load_default_misconceptions  # noqa: E402

_MARKUP = re.compile(r"</?thinking>|^#+ .*$|\*\*(?:问题|答案)\*\*[：:]", re.M)
_SENTENCE = re.compile(r"[^。！？\n]+[。！？]")


def corpus_sentences() -> list[str]:
    text = "\n".join(path.read_text(encoding="utf-8") for path in sorted((REPO_ROOT / "data/corpus").glob("*.md")))
    return [sentence.strip() for sentence in _SENTENCE.findall(_MARKUP.sub("\n", text)) if len(sentence.strip()) > 8]


def text_of(sentences: list[str], rng: random.Random, chars: int) -> str:
    pieces, size = [], 0
    while size < chars:
        sentence = rng.choice(sentences)
        pieces.append(sentence)
        size += len(sentence)
        if rng.random() < 0.15:
            pieces.append("\n\n")
    return "".join(pieces)[:chars]


def make_pairs(count: int, chars: int, seed: int = 7) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    sentences = corpus_sentences()
    predictions, references = [], []
    for _ in range(count):
        reference = text_of(sentences, rng, chars)
        kept = [s for s in _SENTENCE.findall(reference) if rng.random() < 0.5]
        answer_chars = chars * 2 // 3
        answer = "".join(kept)[: answer_chars // 2] + text_of(sentences, rng, answer_chars)[: answer_chars // 2]
        reasoning = text_of(sentences, rng, chars - len(answer) - len("</think>\n\n"))
        predictions.append(f"{reasoning}</think>\n\n{answer}")
        references.append(reference)
    return predictions, references


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (the scoring workers)."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=1000)
    parser.add_argument("--chars", type=int, default=3000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--profile", action="store_true", help="profile a single-process run of 100 pairs")
    args = parser.parse_args()

    started = time.perf_counter()
    dictionary = load_default_dictionary()
    misconceptions = load_default_misconceptions(dictionary)
    facts = load_default_fact_base()
    score_many(["预热。</think>AES 的密钥为 128 位。"], ["AES 的密钥为 128 位。"], dictionary=dictionary,
               misconceptions=misconceptions, facts=facts)
    print(f"startup (dictionary, jieba, {len(misconceptions)} misconceptions): {time.perf_counter() - started:.2f} s")
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (other work slows the timings)")

    predictions, references = make_pairs(args.pairs, args.chars)
    total_chars = sum(map(len, predictions)) + sum(map(len, references))
    print(f"{args.pairs} pairs, {total_chars / 1e6:.2f} M characters")

    if args.profile:
        profiler = cProfile.Profile()
        profiler.runcall(score_many, predictions[:100], references[:100], dictionary=dictionary,
                         misconceptions=misconceptions, facts=facts)
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(30)

    for workers in args.workers:
        started, cpu_started = time.perf_counter(), _cpu_seconds()
        scores = score_many(predictions, references, dictionary=dictionary, misconceptions=misconceptions,
                            facts=facts, workers=workers)
        elapsed, cpu = time.perf_counter() - started, _cpu_seconds() - cpu_started
        print(f"score_many workers={workers}: {elapsed:.2f} s wall, {cpu:.2f} s CPU "
              f"({1000 * cpu / args.pairs:.1f} ms CPU per pair, {args.pairs / elapsed:.0f} pairs/s)")

    started = time.perf_counter()
    summary = aggregate(scores, samples=1000, seed=0)
    print(f"aggregate, {len(summary)} metrics x 1000 bootstrap samples: {time.perf_counter() - started:.2f} s")
    for metric in ("rougeL_char_f1", "rougeL_word_f1", "rougeL_term_f1", "term_f1", "keypoint_coverage"):
        row = summary[metric]
        print(f"  {metric}: {row['mean']:.3f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}] n={row['n']}")


if __name__ == "__main__":
    main()
