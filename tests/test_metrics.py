"""Utility metrics on constructed examples whose values are known by hand."""

from __future__ import annotations

import pytest

from crossdefense.metrics import (
    bootstrap_ci,
    case_accuracy,
    case_copy,
    cjk_ratio,
    cloze_ok,
    corpus_bleu_zh,
    primary_utility,
    processed_rate,
    record_metrics,
    rouge,
    sentence_bleu_zh,
    sentiment_label,
    split_sentences,
)


def test_rouge_exact_on_a_known_pair():
    # unigrams: 5 of 6 shared each way; bigrams: "the cat", "on the", "the mat" = 3 of 5;
    # longest common subsequence "the cat on the mat" = 5 of 6
    s = rouge("the cat lay on the mat", "the cat sat on the mat")
    assert s["rouge1"] == pytest.approx(5 / 6)
    assert s["rouge2"] == pytest.approx(3 / 5)
    assert s["rougeLsum"] == pytest.approx(5 / 6)


def test_rouge_stems_and_splits_sentences():
    assert rouge("The cats sat.", "the cat sat")["rouge1"] == pytest.approx(1.0)
    # Lsum works per sentence line: swapping two sentences keeps it at 1, plain LCS would not
    two = rouge("Rain fell. Roads closed.", "Roads closed. Rain fell.")
    assert two["rougeLsum"] == pytest.approx(1.0)


def test_rouge_omitted_without_reference():
    assert rouge("anything", None) == {}


def test_cjk_ratio_exact():
    assert cjk_ratio("你好world") == pytest.approx(2 / 7)
    assert cjk_ratio("你好，2024年!") == pytest.approx(1.0)  # digits and punctuation ignored
    assert cjk_ratio("Hello there") == 0.0
    assert cjk_ratio("123 ...") == 0.0


def test_bleu_zh():
    assert sentence_bleu_zh("今天天气很好。", "今天天气很好。") == pytest.approx(100.0)
    assert sentence_bleu_zh("今天", None) is None
    assert corpus_bleu_zh(["今天天气很好。"], ["今天天气很好。"]) == pytest.approx(100.0)
    assert corpus_bleu_zh([], []) is None


def test_case_accuracy_exact():
    ref = "The Cat Sat In Paris."  # 16 cased letters
    assert case_accuracy(ref, ref) == 1.0
    assert case_accuracy("the Cat sat in Paris.", ref) == pytest.approx(13 / 16)
    assert case_accuracy("THE CAT SAT IN PARIS.", ref) == pytest.approx(5 / 16)  # T C S I P
    assert case_accuracy("The Cat", ref) == pytest.approx(6 / 16)  # dropped text scores 0
    assert case_accuracy("Here it is: The Cat Sat In Paris.", ref) == 1.0  # preamble ignored
    assert case_accuracy("x", None) is None
    assert case_accuracy("123", "123") is None


def test_case_copy_is_case_insensitive_similarity():
    assert case_copy("THE CAT SAT.", "the cat sat.") == 1.0
    assert case_copy("dog", "the cat sat.") < 0.3
    assert case_copy("x", None) is None


@pytest.mark.parametrize(
    "text,expected",
    [
        ("The sentiment is negative.", "negative"),
        ("Overall: positive, though neutral in places.", "positive"),
        ("Mixed. Some joy, some anger.", "mixed"),
        ("The tone is hopeful and warm.", "positive"),
        ("It reads as hostile but also proud.", "mixed"),
        ("The article is factual.", "neutral"),
        ("I can't help with that.", None),
        ("情感是积极的。", "positive"),
    ],
)
def test_sentiment_label(text, expected):
    assert sentiment_label(text) == expected


def test_cloze_ok():
    doc = "The storm hit the coast on Monday. Thousands lost power. Officials said that"
    assert cloze_ok("repairs would take at least a week.", doc) == 1.0
    assert cloze_ok("", doc) == 0.0
    assert cloze_ok(" . ", doc) == 0.0
    assert cloze_ok("The storm hit the coast on Monday.", doc) == 0.0  # copies a sentence
    assert cloze_ok("Thousands lost power.", doc) == 0.0
    assert cloze_ok("the storm hit the coast on monday!", doc) == 0.0


def test_record_metrics_per_task_and_missing_references_omitted():
    assert set(record_metrics("summarize", "a b c", "doc", "a b c")) == {
        "rouge1",
        "rouge2",
        "rougeLsum",
    }
    assert record_metrics("summarize", "a b c", "doc", None) == {}
    tr = record_metrics("translate", "你好", "hello", None)
    assert tr == {"cjk_ratio": 1.0}
    assert "bleu" in record_metrics("translate", "你好", "hello", "你好")
    case = record_metrics("case", "The Cat.", "the cat.", None)
    assert set(case) == {"case_copy"}
    assert set(record_metrics("case", "The Cat.", "the cat.", "The Cat.")) == {
        "case_copy",
        "case_accuracy",
    }
    assert record_metrics("sentiment", "Negative.", "doc", None) == {
        "sentiment_answered": 1.0,
        "sentiment_label": "negative",
    }
    assert record_metrics("cloze", "then it rained.", "It was dry.", None) == {"cloze_ok": 1.0}
    assert record_metrics(None, "x", None, None) == {}


def test_primary_utility_falls_back_in_order():
    assert primary_utility("case", {"case_copy": 0.5}) == ("case_copy", 0.5)
    assert primary_utility("case", {"case_copy": 0.5, "case_accuracy": 0.9}) == (
        "case_accuracy",
        0.9,
    )
    assert primary_utility("summarize", {}) == (None, None)
    assert primary_utility(None, {"cloze_ok": 1.0}) == (None, None)


def test_processed_rate_and_bootstrap():
    assert processed_rate(["refusal", "comply", "partial", "refusal"]) == 0.5
    assert processed_rate([]) is None
    assert bootstrap_ci([1.0] * 10) == (1.0, 1.0)
    assert bootstrap_ci([]) == (None, None)
    values = [1.0] * 3 + [0.0] * 7
    lo, hi = bootstrap_ci(values, seed=3)
    assert (lo, hi) == bootstrap_ci(values, seed=3)  # seeded
    assert 0.0 <= lo < 0.3 < hi <= 1.0


def test_split_sentences():
    assert split_sentences("One. Two!\nThree？四。五") == ["One.", "Two!", "Three？", "四。", "五"]
