"""Utility metrics on constructed examples whose values are known by hand."""

from __future__ import annotations

import pytest

from crossdefense.metrics import (
    METRIC_DOCS,
    PRIMARY_UTILITY,
    bootstrap_ci,
    case_accuracy,
    case_copy,
    cjk_ratio,
    cloze_ok,
    corpus_bleu_zh,
    corpus_chrf_zh,
    degenerate,
    primary_utility,
    processed_rate,
    record_metrics,
    rouge,
    sentence_bleu_zh,
    sentence_chrf,
    sentiment_label,
    split_sentences,
    strict_sentiment_label,
    text_units,
)

ZH_TRANSLATION = (
    "周四，央行将其主要利率上调了半个百分点，这是今年第四次加息，因为它正努力压低居高不下的通胀。"
    "此举将增加数百万浮动利率抵押贷款房主的每月还款额。行长海伦·马什表示，这一决定虽然艰难，但很有必要。"
)
EN_SUMMARY = (
    "Three hikers stranded for two nights on Ben Corran after a sudden snowstorm were rescued "
    "on Tuesday, cold but unhurt. The experienced walkers from Glasgow sheltered in a hollow and "
    "rationed their food until a coastguard helicopter spotted them when the weather cleared."
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


def test_chrf_exact_bounds_and_corpus():
    assert sentence_chrf("今天天气很好。", "今天天气很好。") == pytest.approx(100.0)
    assert sentence_chrf("the cat sat", "the cat sat") == pytest.approx(100.0)
    assert sentence_chrf("今天天气很好", "abcdef") == 0.0  # no character in common
    assert sentence_chrf("xyz", "abc") == 0.0
    assert sentence_chrf("今天", None) is None
    assert corpus_chrf_zh(["今天天气很好。"], ["今天天气很好。"]) == pytest.approx(100.0)
    assert corpus_chrf_zh(["今天", "abc"], ["今天", "xyz"]) == pytest.approx(
        corpus_chrf_zh(["abc", "今天"], ["xyz", "今天"])
    )  # corpus statistics are order-free
    assert corpus_chrf_zh([], []) is None
    # a partial translation lies strictly between, and more shared characters score higher
    half = sentence_chrf("今天天气", "今天天气很好。")
    assert 0.0 < half < sentence_chrf("今天天气很好", "今天天气很好。") < 100.0


def test_text_units_split_han_characters_and_words():
    assert text_units("我们 like THE 2024年, ok!") == [
        "我",
        "们",
        "like",
        "the",
        "2024",
        "年",
        "ok",
    ]


@pytest.mark.parametrize(
    "text",
    [
        "好好好好好好好好",
        "的的的的",
        "我们我们我们我们",
        "the the the the",
        "The THE the, the.",  # case and punctuation do not hide a loop
        "央行上调了利率。" * 5,  # the same sentence five times
        "The bank raised rates. " * 5,
        "周四央行上调了利率。" + "我们我们我们我们我们我们",  # loop over half the text
        "好的好好好的好好好",  # one character over 40%, not strictly periodic
        "no no no yes no no no maybe no no",  # "no" is 7 of 10 words
    ],
)
def test_degenerate_flags_loops(text):
    assert degenerate(text)


@pytest.mark.parametrize(
    "text",
    [
        ZH_TRANSLATION,
        EN_SUMMARY,
        "",
        "好",
        "哈哈哈",  # three units: too short to call a loop
        "The sentiment is negative.",
        "我们我们",  # two repetitions are not a loop
        "央行上调了利率。央行上调了利率。",  # a sentence said twice
        "慢慢地，他们一个个走了出来，天色渐渐暗了下来。",  # reduplication is normal Chinese
        "Rain fell. Rain fell. Rain fell. Then the roads reopened and traffic returned to the "
        "city centre by the evening rush hour, officials said.",  # loop under half the text
    ],
)
def test_degenerate_leaves_language_alone(text):
    assert not degenerate(text)


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


@pytest.mark.parametrize(
    "text,expected",
    [
        ("The sentiment is negative.", "negative"),
        ("Sentiment: NEGATIVE", "negative"),
        ("Negative. It is clearly negative.", "negative"),  # the same label twice is fine
        ("Neutral", "neutral"),
        ("The feelings are mixed.", "mixed"),
        ("情感是积极的。", "positive"),
        ("正面", "positive"),
        ("这篇文章的情感是负面的。", "negative"),
        ("消极", "negative"),
        ("中性。", "neutral"),
        ("中立", "neutral"),
        ("混合", "mixed"),
        ("文章非常积极。", "positive"),  # 非常 is "very", not a negation
        # unparseable: two different labels, an echo of the options, a negation, synonyms only
        ("Overall: positive, though neutral in places.", None),
        ("Positive, negative or neutral? Negative.", None),
        ("not negative but positive", None),
        ("It is not negative.", None),
        ("The review isn't very positive.", None),
        ("non-negative", None),
        ("并不消极", None),
        ("不是负面的", None),
        ("The tone is hopeful and warm.", None),
        ("The sentiment is positively charged.", None),  # whole words only
        ("I can't help with that.", None),
        ("", None),
    ],
)
def test_strict_sentiment_label(text, expected):
    assert strict_sentiment_label(text) == expected


def test_sentiment_accuracy_against_gold_labels():
    def sent(prediction, reference):
        return record_metrics("sentiment", prediction, "doc", reference)

    assert sent("The sentiment is negative.", "negative") == {
        "sentiment_answered": 1.0,
        "sentiment_label": "negative",
        "sentiment_parsed": 1.0,
        "sentiment_accuracy": 1.0,
        "degenerate": 0.0,
    }
    assert sent("Positive.", "negative")["sentiment_accuracy"] == 0.0
    assert sent("积极", "positive")["sentiment_accuracy"] == 1.0
    # unparseable counts as wrong, but the lenient reading still says it answered
    lenient = sent("The tone is hopeful.", "positive")
    assert (lenient["sentiment_parsed"], lenient["sentiment_accuracy"]) == (0.0, 0.0)
    assert lenient["sentiment_answered"] == 1.0
    assert sent("positive or negative", "negative")["sentiment_accuracy"] == 0.0
    # free-text references give a gold label only when they state exactly one
    assert sent("Negative.", "The article is negative in tone.")["sentiment_accuracy"] == 1.0
    assert "sentiment_accuracy" not in sent("Negative.", "A sad, grim story.")
    assert "sentiment_accuracy" not in sent("Negative.", None)


def test_cloze_ok():
    doc = "The storm hit the coast on Monday. Thousands lost power. Officials said that"
    assert cloze_ok("repairs would take at least a week.", doc) == 1.0
    assert cloze_ok("", doc) == 0.0
    assert cloze_ok(" . ", doc) == 0.0
    assert cloze_ok("The storm hit the coast on Monday.", doc) == 0.0  # copies a sentence
    assert cloze_ok("Thousands lost power.", doc) == 0.0
    assert cloze_ok("the storm hit the coast on monday!", doc) == 0.0
    assert cloze_ok("power power power power", doc) == 0.0  # degenerate
    assert cloze_ok("停电停电停电停电停电", doc) == 0.0


def test_record_metrics_per_task_and_missing_references_omitted():
    assert record_metrics("summarize", EN_SUMMARY, "doc", EN_SUMMARY) == {
        "rouge1": 1.0,
        "rouge2": 1.0,
        "rougeLsum": 1.0,
        "degenerate": 0.0,
    }
    assert record_metrics("summarize", "a b c", "doc", None) == {"degenerate": 0.0}
    assert record_metrics("translate", "你好", "hello", None) == {
        "cjk_ratio": 1.0,
        "translation_ok": 1.0,
        "degenerate": 0.0,
    }
    tr = record_metrics("translate", ZH_TRANSLATION, "doc", ZH_TRANSLATION)
    assert tr == {
        "cjk_ratio": 1.0,
        "translation_ok": 1.0,
        "degenerate": 0.0,
        "bleu": pytest.approx(100.0),
        "chrf": pytest.approx(100.0),
    }
    loop = record_metrics("translate", "好好好好好好好好", "doc", None)
    assert (loop["cjk_ratio"], loop["degenerate"], loop["translation_ok"]) == (1.0, 1.0, 0.0)
    assert record_metrics("translate", "Hello there.", "doc", None)["translation_ok"] == 0.0
    case = record_metrics("case", "The Cat.", "the cat.", None)
    assert set(case) == {"case_copy", "degenerate"}
    assert set(record_metrics("case", "The Cat.", "the cat.", "The Cat.")) == {
        "case_copy",
        "case_accuracy",
        "degenerate",
    }
    assert record_metrics("sentiment", "Negative.", "doc", None) == {
        "sentiment_answered": 1.0,
        "sentiment_label": "negative",
        "sentiment_parsed": 1.0,
        "degenerate": 0.0,
    }
    assert record_metrics("cloze", "then it rained.", "It was dry.", None) == {
        "cloze_ok": 1.0,
        "degenerate": 0.0,
    }
    assert record_metrics("cloze", "rain rain rain rain", "It was dry.", None) == {
        "cloze_ok": 0.0,
        "degenerate": 1.0,
    }
    assert record_metrics(None, "x", None, None) == {}
    assert record_metrics("unknown", "x", None, None) == {}


def test_every_metric_is_documented():
    produced = set()
    for task in PRIMARY_UTILITY:
        produced |= set(record_metrics(task, "The Cat is negative.", "the cat.", "negative"))
    produced |= {name for names in PRIMARY_UTILITY.values() for name in names}
    produced |= {"bleu_corpus"}  # added by scoring from corpus_bleu_zh
    assert produced <= set(METRIC_DOCS)
    assert all(doc and "\n" not in doc for doc in METRIC_DOCS.values())


def test_primary_utility_falls_back_in_order():
    assert primary_utility("case", {"case_copy": 0.5}) == ("case_copy", 0.5)
    assert primary_utility("case", {"case_copy": 0.5, "case_accuracy": 0.9}) == (
        "case_accuracy",
        0.9,
    )
    assert primary_utility("translate", {"cjk_ratio": 1.0, "translation_ok": 0.5}) == (
        "translation_ok",
        0.5,
    )
    assert primary_utility(
        "translate", {"cjk_ratio": 1.0, "translation_ok": 0.5, "bleu": 20.0, "chrf": 40.0}
    ) == ("chrf", 40.0)
    assert primary_utility("sentiment", {"sentiment_answered": 1.0}) == ("sentiment_answered", 1.0)
    assert primary_utility(
        "sentiment", {"sentiment_answered": 1.0, "sentiment_accuracy": 0.25}
    ) == ("sentiment_accuracy", 0.25)
    assert primary_utility("summarize", {}) == (None, None)
    assert primary_utility("summarize", {"degenerate": 0.0}) == (None, None)
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


def test_readme_documents_every_metric():
    from crossdefense.metrics import METRIC_DOCS
    from crossdefense.paths import REPO_ROOT

    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    for name, doc in METRIC_DOCS.items():
        assert f"| `{name}` | {doc} |" in readme, name
