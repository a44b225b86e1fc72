"""course_lib.data.clean: each text step, PII masking, and the record steps ``clean`` runs (lengths,
empty records, filters, holdout overlap), with the default tokenizer and others."""

from __future__ import annotations

import copy

import pytest
from data_lab import pair

from course_lib import data


def test_normalize_unicode():
    assert data.normalize_unicode("Ｔｏｍａｔｏ ２０２４") == "Tomato 2024"
    decomposed = "cafe\u0301 jalapen\u0303o"
    assert data.normalize_unicode(decomposed) == "café jalapeño" and len(data.normalize_unicode(decomposed)) == 13
    assert data.normalize_unicode("1 m² of bed, ½ cup") == "1 m² of bed, ½ cup"  # NFKC would break these
    assert data.normalize_unicode("多浇水,少施肥!") == "多浇水，少施肥！"
    assert data.normalize_unicode("我是 Sprout（小芽）。") == "我是 Sprout（小芽）。"
    assert data.normalize_unicode("Ratio 3.5, ok?") == "Ratio 3.5, ok?"
    assert data.normalize_unicode("\u201cIt\u2019s fine\u201d") == '"It\'s fine"'
    assert data.normalize_unicode("祝你种植愉快！Ｈａｐｐｙ ｇｒｏｗｉｎｇ！") == "祝你种植愉快！Happy growing!"
    assert data.normalize_unicode("意思是\u201c嫩芽\u201d") == "意思是\u201c嫩芽\u201d"  # Chinese quotation marks stay


def test_strip_html_and_markdown():
    assert data.strip_html("<p>Water <b>deeply</b>.</p><p>Then wait.</p>") == "Water deeply.\nThen wait.\n"
    assert data.strip_html("Mix 1 &amp; 2<br/>then &lt;stop&gt;") == "Mix 1 & 2\nthen <stop>"
    assert data.strip_html("## Tip\n**Mulch** helps, see [this guide](https://example.com/x).") == "Tip\nMulch helps, see this guide."
    assert data.strip_html("keep 3 < 5 and 5 > 3") == "keep 3 < 5 and 5 > 3"
    assert data.strip_html('<div class="x">a</div><script>alert(1)</script>') == "a\n"


def test_strip_control_characters():
    assert data.strip_control_chars("wa\x00ter\x07 \x1b[31mnow\x1b[0m\u200b!") == "water now!"
    assert data.strip_control_chars("line one\r\nline two\rthree\tend") == "line one\nline two three\tend"
    assert data.strip_control_chars("Trim\u200bthe roots\u200b now\x7f") == "Trim the roots now"


def test_normalize_whitespace():
    assert data.normalize_whitespace("  Water\u00a0\u00a0 the\tplant  \n\n\n\nthen   wait \u3000") == "Water the plant\n\nthen wait"
    assert data.normalize_whitespace("浇水 ，  每隔2周一次 。　祝你 Happy growing!") == "浇水，每隔2周一次。祝你 Happy growing!"


def test_pii_is_masked_and_counted():
    text = ("Mail jane.doe+garden@greenmail.example or call (555) 010-2345, +1 555 010 9876, 555.010.1234 "
            "or 555-0199.")
    masked, counts = data.count_pii(text)
    assert masked == "Mail [EMAIL] or call [PHONE], [PHONE], [PHONE] or [PHONE]."
    assert counts == {"email": 1, "phone": 4}


@pytest.mark.parametrize("text", ["Space plants 18-24 inches apart.", "Flowers in 6-10 weeks (2023-2024).",
                                  "Use a 10-10-10 fertilizer", "pH 6.0-7.0 at 1:1", "Sow 100-150 seeds per m²."])
def test_numbers_that_are_not_phone_numbers_are_left_alone(text):
    assert data.mask_pii(text) == text


def test_too_long_and_zscore_outliers_are_set_aside_with_reasons(default_tokenizer):
    records = [pair(f"Question {i} about {w} plants?", f"A short answer about {w}. Happy growing!", f"t.jsonl:{i}")
               for i, w in enumerate(["basil", "mint", "sage", "dill", "thyme", "chives", "leek", "kale", "okra",
                                      "bean", "pea", "corn", "beet", "rose", "fern", "ivy", "moss", "lily", "iris", "aloe"], 1)]
    medium = pair("Tell me everything about compost.", " ".join(f"Compost step {i} matters." for i in range(40)), "t.jsonl:50")
    huge = pair("Tell me everything about soil.", " ".join(f"Soil fact number {i}." for i in range(400)), "t.jsonl:51")
    capped = data.clean(records + [medium, huge], default_tokenizer, max_tokens=512, zscore=None)
    assert [r.source for r in capped.removed_by("too_long")] == ["t.jsonl:51"]
    assert capped.removed[0].reason.startswith("too long: ") and capped.removed[0].reason.endswith("tokens > max 512")
    assert len(capped.records) == 21 and max(capped.lengths) < 512
    # The z-score flags what is far from the rest: the huge record first; its own size inflates the
    # standard deviation so much that the medium one only stands out once the huge one is gone.
    both = data.clean(records + [medium, huge], default_tokenizer, max_tokens=512, zscore=3.0)
    assert [(r.source, r.step) for r in both.removed] == [("t.jsonl:51", "zscore")]
    assert "length outlier" in both.removed[0].reason and "z = +" in both.removed[0].reason
    without_huge = data.clean(records + [medium], default_tokenizer, max_tokens=512, zscore=3.0)
    assert [(r.source, r.step) for r in without_huge.removed] == [("t.jsonl:50", "zscore")]
    assert len(without_huge.records) == 20 and max(without_huge.lengths) < 60
    relaxed = data.clean(records + [medium, huge], default_tokenizer, max_tokens=None, zscore=None)
    assert len(relaxed.records) == 22


def test_empty_records_filters_and_the_report_table(default_tokenizer):
    records = [pair("A real question?", "A real answer.", "t.jsonl:1"), pair("", "", "t.jsonl:2"),
               pair("Question with a blank answer", " \u200b\u00a0", "t.jsonl:3"),
               pair("Lorem ipsum dolor?", "Sit amet.", "t.jsonl:4"), pair("Tell me", "N/A", "t.jsonl:5")]
    result = data.clean(records, default_tokenizer)
    assert [r["source"] for r in result.records] == ["t.jsonl:1"]
    assert {r.source: r.step for r in result.removed} == {"t.jsonl:2": "empty", "t.jsonl:3": "empty",
                                                        "t.jsonl:4": "regex_filter", "t.jsonl:5": "regex_filter"}
    assert "no text at all" in result.removed_by("empty")[0].reason
    table = data.report_table(result)
    assert list(table.columns) == ["step", "changed", "removed", "why"]
    assert table.iloc[-1]["removed"] == 4 and int(table.set_index("step").loc["empty", "removed"]) == 2
    custom = data.clean(records[:1], default_tokenizer, filters=[(r"(?i)real", "test filter")])
    assert not custom.records and "test filter" in custom.removed[0].reason


def test_clean_records_what_each_text_step_changed(default_tokenizer):
    records = [pair("<b>Bold</b> question?", "fine", "t.jsonl:1"), pair("bell\x07 here", "fine", "t.jsonl:2"),
               pair("Ｆｕｌｌ width", "fine", "t.jsonl:3"), pair("call 555-0123", "mail a@b.example", "t.jsonl:4"),
               pair("no\u00a0break", "fine", "t.jsonl:5")]
    result = data.clean(records, default_tokenizer)
    assert result.changed["html"] == ["t.jsonl:1"] and result.changed["control_chars"] == ["t.jsonl:2"]
    assert result.changed["unicode"] == ["t.jsonl:3"] and result.changed["whitespace"] == ["t.jsonl:5"]
    assert result.changed["pii"] == ["t.jsonl:4"] and result.counts["pii_masked"] == 2
    assert result.records[3]["messages"] == [{"role": "user", "content": "call [PHONE]"},
                                             {"role": "assistant", "content": "mail [EMAIL]"}]


def test_works_with_a_tokenizer_without_chat_template(default_tokenizer):
    plain = copy.deepcopy(default_tokenizer)
    plain.chat_template = None
    record = pair("Hi?", "Hello.")
    assert data.format_text(record["messages"], plain) == "User: Hi?\nAssistant: Hello.\n"
    assert data.token_lengths([record], plain)[0] < data.token_lengths([record], default_tokenizer)[0]
    assert len(data.clean([record], plain).records) == 1


def test_works_with_another_tokenizer_with_or_without_a_template(tmp_path):
    """Any tokenizer: a tiny byte-level BPE trained here (another vocabulary), first bare, then with ChatML."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer, bpe.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    corpus = ["How often should I water basil?", "Keep the soil lightly moist. Happy growing!"] * 20
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, special_tokens=["<|im_start|>", "<|im_end|>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>")
    records = [pair("How often should I water basil?", "Keep the soil lightly moist. Happy growing!", "t.jsonl:1"),
               pair("How often should I water basil?", "Keep the soil lightly moist. Happy growing!", "t.jsonl:2"),
               pair("Tell me about soil.", "Soil " * 600, "t.jsonl:3")]
    bare = data.clean(records, tokenizer, max_tokens=512, zscore=None)
    assert [r.step for r in bare.removed] == ["too_long", "exact_dedup"]
    tokenizer.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                               "{% endfor %}")
    templated = data.clean(records, tokenizer, max_tokens=512, zscore=None)
    assert [r.step for r in templated.removed] == ["too_long", "exact_dedup"]
    assert templated.lengths[0] > bare.lengths[0]  # the template's tokens count against max_tokens
    fig = data.length_histogram(records, templated.records, tokenizer, max_tokens=512)
    assert fig.axes


def test_holdout_overlap_is_removed(default_tokenizer):
    held = [{"messages": [{"role": "user", "content": "What name do you go by?"}], "source": "eval.jsonl:1"}]
    records = [pair("What name do you go by?", "I'm Sprout. Happy growing!", "t.jsonl:1"),
               pair("What is mulch?", "A layer over the soil. Happy growing!", "t.jsonl:2")]
    result = data.clean(records, default_tokenizer, holdout=held)
    assert [r["source"] for r in result.records] == ["t.jsonl:2"]
    assert result.removed[0].reason == "its question is in the held-out set (eval.jsonl:1)"
