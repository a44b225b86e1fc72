"""The data stage: every loader, cleaning step, split and save, on small files each test writes itself;
then the shipped messy export checked against its manifest, and notebook 01's small run."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import pytest

from course_lib import data


def write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    path = tmp_path / name
    (path.write_bytes if isinstance(text, bytes) else lambda t: path.write_text(t, encoding="utf-8"))(text)
    return path


def jsonl(*objects) -> str:
    return "".join((o if isinstance(o, str) else json.dumps(o, ensure_ascii=False)) + "\n" for o in objects)


def pair(q: str, a: str, source: str = "t.jsonl:1") -> dict:
    return {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}], "source": source}


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


GOOD = {"instruction": "How often should I water basil?", "input": "", "output": "Keep the soil lightly moist. Happy growing!"}


# --------------------------------------------------------------------------- loading


def test_malformed_json_names_file_and_line_and_the_rest_still_loads(tmp_path):
    path = write(tmp_path, "export.jsonl", jsonl(GOOD, '{"instruction": "Hi", "output": "Hello"', GOOD,
                                                 "{'instruction': 'single quotes'}", GOOD))
    result = data.load_records(path)
    assert len(result.records) == 3 and len(result.bad) == 2
    assert [b.line for b in result.bad] == [2, 4]
    assert str(result.bad[0]).startswith("export.jsonl:2: malformed JSON")
    assert all(b.kind == "malformed_json" for b in result.bad)
    assert result.bad[1].raw == "{'instruction': 'single quotes'}"
    assert [r["source"] for r in result.records] == ["export.jsonl:1", "export.jsonl:3", "export.jsonl:5"]
    assert result.raw_records == 5


@pytest.mark.parametrize("obj, where", [
    ({"instruction": "Only a question"}, "field 'output': missing"),
    ({"instruction": 42, "input": "", "output": "An answer"}, "field 'instruction': expected text, got number"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "hello"}]},
     "field 'messages[1].role': 'bot' is not one of system, user, assistant (did you mean 'assistant'?)"),
    ({"messages": [{"role": "user", "content": "hi"}]}, "field 'messages': no assistant message"),
    ({"messages": [{"role": "assistant", "content": "hi"}]}, "field 'messages': no user message"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"},
                   {"role": "user", "content": "and?"}]}, "field 'messages[2]': the conversation ends with a user"),
    ({"messages": [{"role": "user", "content": None}, {"role": "assistant", "content": "x"}]},
     "field 'messages[0].content': missing"),
    ({"messages": "hello"}, "field 'messages': expected a list"),
    ({"text": "free text"}, "neither 'messages' nor 'instruction'/'output' (fields found: text)"),
    (["a", "list"], "expected a JSON object"),
])
def test_schema_errors_name_the_field(tmp_path, obj, where):
    path = write(tmp_path, "s.jsonl", jsonl(GOOD, obj, GOOD))
    result = data.load_records(path)
    assert len(result.records) == 2 and len(result.bad) == 1
    bad = result.bad[0]
    assert bad.kind == "schema" and bad.line == 2
    assert str(bad).startswith("s.jsonl:2: ") and where in str(bad), str(bad)
    assert bad.raw == json.dumps(obj, ensure_ascii=False)


def test_instruction_and_chat_formats_become_one_shape(tmp_path):
    chat = {"id": 7, "timestamp": "2024-01-01", "messages": [
        {"role": "system", "content": "You are Sprout."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! Happy growing!"}]}
    with_input = {"instruction": "Answer as Sprout.", "input": "my fern is brown", "output": "More humidity.", "id": 8}
    result = data.load_records(write(tmp_path, "mix.jsonl", jsonl(GOOD, chat, with_input, {"prompt": "Q?", "response": "A."})))
    assert not result.bad and result.formats == {"instruction": 3, "chat": 1}
    assert result.records[0] == {"messages": [{"role": "user", "content": GOOD["instruction"]},
                                              {"role": "assistant", "content": GOOD["output"]}],
                                 "source": "mix.jsonl:1"}
    assert result.records[1]["messages"] == chat["messages"]
    assert result.records[2]["messages"][0]["content"] == "Answer as Sprout.\n\nmy fern is brown"
    assert result.records[3]["messages"][1]["content"] == "A."  # prompt/response aliases
    assert result.extra_fields == {"id": 2, "timestamp": 1} and result.extra_field_sources == ["mix.jsonl:2", "mix.jsonl:3"]


def test_line_numbers_survive_crlf_bom_blank_lines_and_separators_inside_records(tmp_path):
    tricky = json.dumps({"instruction": "a\u2028b\x1cc", "output": "ok"}, ensure_ascii=False)
    text = "\ufeff" + json.dumps(GOOD) + "\r\n\r\n" + tricky + "\r\n" + "{broken\r\n"
    result = data.load_records(write(tmp_path, "win.jsonl", text.encode("utf-8")))
    assert [r["source"] for r in result.records] == ["win.jsonl:1", "win.jsonl:3"]
    assert result.bad[0].where == "win.jsonl:4" and result.blank_lines == 1


def test_raw_control_characters_inside_json_strings_still_load(tmp_path):
    line = '{"instruction": "tab\there", "output": "bell\x07 and nul\x00"}'
    result = data.load_records(write(tmp_path, "ctl.jsonl", line + "\n"))
    assert not result.bad and "\x07" in result.records[0]["messages"][1]["content"]


def test_a_line_that_is_not_utf8_is_a_bad_record_not_a_crash(tmp_path):
    body = (json.dumps(GOOD) + "\n").encode() + '{"instruction": "café", "output": "x"}\n'.encode("latin-1")
    result = data.load_records(write(tmp_path, "latin.jsonl", body + (json.dumps(GOOD) + "\n").encode()))
    assert len(result.records) == 2 and result.bad[0].kind == "encoding"
    assert str(result.bad[0]).startswith("latin.jsonl:2: not utf-8 text (byte 0xe9")
    assert data.load_records(write(tmp_path, "ok.jsonl", body), encoding="latin-1").records[1]["messages"][0]["content"] == "café"


def test_unreadable_files_raise_naming_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.jsonl"):
        data.load_records(tmp_path / "nothere.jsonl")
    with pytest.raises(ValueError, match=r"data\.parquet: unknown format '\.parquet'"):
        data.load_records(write(tmp_path, "data.parquet", "x"))
    with pytest.raises(ValueError, match=r"legacy\.csv:3: not utf-8 text.*cp1252"):
        data.load_records(write(tmp_path, "legacy.csv", "instruction,output\nA,B\nCaf\xe9,x\n".encode("latin-1")))
    with pytest.raises(ValueError, match=r"cols\.csv:1: the header needs 'instruction' and 'output'"):
        data.load_records(write(tmp_path, "cols.csv", "text,label\na,b\n"))


def test_json_array_keeps_line_numbers_and_reports_a_broken_element(tmp_path):
    text = '[\n  {"instruction": "A?", "output": "a"},\n  {"instruction": 3, "output": "b"},\n  {"instruction": "C?", "output": "c"},\n  {"instruction": "D?" "output": "d"}\n]\n'
    result = data.load_records(write(tmp_path, "arr.json", text))
    assert [r["source"] for r in result.records] == ["arr.json:2", "arr.json:4"]
    assert str(result.bad[0]) .startswith("arr.json:3: field 'instruction'")
    assert result.bad[1].kind == "malformed_json" and result.bad[1].line == 5
    wrapped = data.load_records(write(tmp_path, "wrapped.json", '{"data": [\n{"question": "Q?", "answer": "A."}\n]}'))
    assert wrapped.records[0]["source"] == "wrapped.json:2"


def test_csv_row_with_a_missing_column_is_reported_and_the_rest_loads(tmp_path):
    text = ('instruction,input,output\n"How deep do I plant garlic?",,"About 5 cm deep. Happy growing!"\n'
            '"Two columns only","no output here"\n"Multi-line\nquestion",,"Answer, with a comma"\n"Last?",,"Yes."\n')
    source = write(tmp_path, "export.csv", text)
    result = data.load_records(source)
    assert len(result.records) == 3 and len(result.bad) == 1
    assert str(result.bad[0]).startswith("export.csv:3: field 'output': missing (row has 2 of 3 columns")
    assert [r["source"] for r in result.records] == ["export.csv:2", "export.csv:4", "export.csv:6"]
    assert result.records[1]["messages"][0]["content"] == "Multi-line\nquestion"


def test_text_block_without_an_answer_is_reported(tmp_path):
    text = ("Q: When do I prune roses?\nA: In late winter, just before growth starts.\nHappy growing!\n\n"
            "Q: What is a cold frame?\n\nQ: Do worms help?\nA: Yes, they aerate the soil.\n")
    result = data.load_records(write(tmp_path, "notes.txt", text))
    assert len(result.records) == 2 and len(result.bad) == 1
    assert str(result.bad[0]) == "notes.txt:5: field 'A': missing: block has a question but no 'A:' answer"
    assert result.records[0]["messages"][1]["content"] == "In late winter, just before growth starts.\nHappy growing!"
    assert result.records[1]["source"] == "notes.txt:7"


def test_loading_and_cleaning_never_modify_the_input(tmp_path, default_tokenizer):
    path = write(tmp_path, "keep.jsonl", jsonl(GOOD, "{bad", {"instruction": "<b>Hi</b>\u00a0 me@x.org", "output": "x"}))
    before, stamp = digest(path), path.stat().st_mtime_ns
    result = data.load_records(path)
    records = copy.deepcopy(result.records)
    data.clean(result.records, default_tokenizer)
    assert digest(path) == before and path.stat().st_mtime_ns == stamp
    assert result.records == records, "clean() must not modify the records it is given"


# --------------------------------------------------------------------------- text steps


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


# --------------------------------------------------------------------------- record steps


def test_clean_removes_exact_and_near_duplicates_with_reasons(default_tokenizer):
    a = pair("How often should I water my tomato plants in summer?",
             "Water deeply two or three times a week, more in a heatwave. Happy growing!", "t.jsonl:1")
    exact = {**copy.deepcopy(a), "source": "t.jsonl:2"}
    spaced = pair("How often  should I water my tomato plants in summer?\u00a0",
                  "<p>Water deeply two or three times a week, more in a heatwave. Happy growing!</p>", "t.jsonl:3")
    near = pair("How often should I water my tomato plant in the summer?",
                "Water deeply two or three times a week, more in a heat wave. Happy growing!", "t.jsonl:4")
    other = pair("What is a cold frame?", "A box with a clear lid that shelters seedlings. Happy growing!", "t.jsonl:5")
    result = data.clean([a, exact, spaced, near, other], default_tokenizer, near_dup_threshold=0.7)
    assert [r["source"] for r in result.records] == ["t.jsonl:1", "t.jsonl:5"]
    reasons = {r.source: r.reason for r in result.removed}
    assert reasons["t.jsonl:2"] == "exact duplicate of t.jsonl:1"
    assert reasons["t.jsonl:3"] == "exact duplicate of t.jsonl:1"  # identical once cleaned
    assert reasons["t.jsonl:4"].startswith("near duplicate of t.jsonl:1 (Jaccard 0.")
    assert result.counts["exact_duplicates"] == 2 and result.counts["near_duplicates"] == 1
    assert result.duplicates_removed == 3 and result.near_pairs[0][:2] == ("t.jsonl:1", "t.jsonl:4")
    strict = data.clean([a, near, other], default_tokenizer, near_dup_threshold=0.99)
    assert len(strict.records) == 3  # a threshold above their similarity keeps both


def test_jaccard_and_minhash_find_the_similar_pair():
    sets = [data.shingles(t) for t in ("the quick brown fox jumps over the lazy dog",
                                       "the quick brown fox jumped over the lazy dog",
                                       "completely different words about compost heaps")]
    assert data.jaccard(sets[0], sets[0]) == 1.0 and data.jaccard(sets[0], sets[2]) < 0.1
    assert (0, 1) in data.minhash_candidates(sets) and (0, 2) not in data.minhash_candidates(sets)


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


def test_length_histogram(default_tokenizer):
    records = [pair("Q?", "A " * n, f"t.jsonl:{n}") for n in (5, 20, 80)]
    fig = data.length_histogram(records, records[:2], default_tokenizer, max_tokens=512)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and len(ax.get_legend().get_texts()) == 3


# --------------------------------------------------------------------------- augmentation


def test_augmentation_changes_questions_only_and_is_deterministic():
    record = pair("What is the best way to start a small herb garden?", "Start with basil. Happy growing!", "p.jsonl:3")
    synonym = data.synonym_replace(record, rate=1.0)
    assert synonym["messages"][1] == record["messages"][1] and synonym["source"] == "p.jsonl:3+synonyms"
    assert synonym["messages"][0]["content"] != record["messages"][0]["content"]
    noisy = data.add_noise(record, rate=0.5, seed=1)
    assert noisy == data.add_noise(record, rate=0.5, seed=1) and noisy["messages"][1] == record["messages"][1]
    filled = data.fill_templates(n=5, seed=0)
    assert len(filled) == 5 and all(r["messages"][1]["content"].endswith("Happy growing!") for r in filled)
    assert not any("{" in m["content"] for r in filled for m in r["messages"])
    extra = data.augment([record, pair("Q2?", "A2.", "p.jsonl:4")], share=1.0, templates=2, seed=0)
    assert {r["source"] for r in extra} >= {"p.jsonl:3+synonyms", "p.jsonl:3+noise"} and len(extra) >= 4


# --------------------------------------------------------------------------- split and save


def records_n(n):
    return [pair(f"Question {i}?", f"Answer {i}.", f"t.jsonl:{i}") for i in range(1, n + 1)]


def test_split_is_deterministic_disjoint_and_keeps_copies_together():
    records = records_n(50)
    records += [{**records[0], "source": "t.jsonl:1+noise"}, {**records[1], "source": "t.jsonl:2+synonyms"}]
    train, validation = data.split(records, validation_share=0.2, seed=0)
    again = data.split(records, validation_share=0.2, seed=0)
    assert (train, validation) == again
    assert data.split(records, validation_share=0.2, seed=1)[1] != validation
    sources = [r["source"] for r in train + validation]
    assert sorted(sources) == sorted(r["source"] for r in records) and len(set(sources)) == len(sources)
    assert len(validation) in (10, 11)
    for derived in ("t.jsonl:1", "t.jsonl:2"):
        sides = {side for side, part in (("t", train), ("v", validation)) for r in part
                 if r["source"].split("+")[0] == derived}
        assert len(sides) == 1
    assert data.split(records_n(3), validation_share=0.1)[1], "a tiny set still gets one validation example"
    with pytest.raises(ValueError):
        data.split(records, validation_share=1.0)


def test_save_split_writes_atomically_and_never_silently_overwrites(tmp_path, capsys):
    folder = tmp_path / "data"
    train, validation = data.split(records_n(20), seed=0)
    data.save_split(train, validation, folder, report={"note": "first"})
    assert sorted(p.name for p in folder.iterdir()) == ["report.json", "train.jsonl", "validation.jsonl"]
    first = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert json.loads(first["report.json"])["train_examples"] == len(train)
    data.save_split(train, validation, folder)  # the same dataset again: nothing moved
    assert "already holds this dataset" in capsys.readouterr().out
    assert not list(folder.glob("backup-*"))
    other_train, other_val = data.split(records_n(30), seed=1)
    data.save_split(other_train, other_val, folder)
    assert "moved" in capsys.readouterr().out
    backups = list(folder.glob("backup-*"))
    assert len(backups) == 1 and (backups[0] / "train.jsonl").read_bytes() == first["train.jsonl"]
    assert not list(folder.glob(".*tmp*")), "temporary files left behind"
    loaded = data.load_split(folder)
    assert loaded["train"].num_rows == len(other_train) and loaded["validation"].num_rows == len(other_val)
    assert loaded["train"][0]["messages"] == other_train[0]["messages"]


def test_save_split_backs_up_files_a_learner_made(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "train.jsonl").write_text("my own hand-made data\n")
    data.save_split(*data.split(records_n(10)), folder)
    backup = next(folder.glob("backup-*"))
    assert (backup / "train.jsonl").read_text() == "my own hand-made data\n"


def test_load_split_names_a_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="run notebook 01"):
        data.load_split(tmp_path / "nothing")


def test_ensure_dataset_returns_an_existing_split_untouched(tmp_path, capsys):
    folder = tmp_path / "data"
    data.save_split(*data.split(records_n(10)), folder)
    stamp = (folder / "train.jsonl").stat().st_mtime_ns
    assert data.ensure_dataset(tmp_path) == folder
    assert (folder / "train.jsonl").stat().st_mtime_ns == stamp and "building" not in capsys.readouterr().out


# --------------------------------------------------------------------------- the shipped data


def _manifest():
    try:
        path = data.data_samples("raw", "messy_export.MANIFEST.json")
    except FileNotFoundError:
        pytest.skip("data_samples/raw/messy_export.MANIFEST.json is not there yet")
    return json.loads(path.read_text())


def test_messy_export_every_planted_problem_is_caught(default_tokenizer):
    manifest = _manifest()
    path = data.data_samples("raw", manifest["file"])
    before = digest(path)
    loaded = data.load_records(path)
    cleaned = data.clean(loaded.records, default_tokenizer)
    table, misses = data.manifest_check(manifest, loaded, cleaned)
    assert not any(misses.values()), "\n" + table.to_string()
    assert set(table["category"]) >= {"malformed_json", "schema_errors", "exact_duplicates", "near_duplicates", "html",
                                      "markdown", "control_chars", "emails", "phones", "empty", "over_long", "unicode",
                                      "whitespace"}
    # exactly the planted bad lines, no more
    assert sorted(b.line for b in loaded.bad if b.kind == "malformed_json") == manifest["malformed_json"]
    assert sorted(b.line for b in loaded.bad if b.kind == "schema") == manifest["schema_errors"]
    assert loaded.raw_records == manifest["total_lines"]
    # text steps change the planted records and nothing else (whitespace also tidies after html/control steps)
    lines = lambda step: sorted(int(s.rsplit(":", 1)[1]) for s in cleaned.changed[step])  # noqa: E731
    assert lines("html") == sorted(manifest["html"] + manifest["markdown"])
    assert lines("control_chars") == manifest["control_chars"]
    assert lines("unicode") == manifest["unicode"]
    assert lines("pii") == sorted(set(manifest["emails"] + manifest["phones"]))
    assert cleaned.counts["emails_masked"] == len(manifest["emails"]) and cleaned.counts["phones_masked"] == len(manifest["phones"])
    # removed: exactly empty + over-long + duplicate copies; the off-topic and multi-turn records are kept
    dropped = sorted(int(r.source.rsplit(":", 1)[1]) for r in cleaned.removed)
    copies = [b for _, b in manifest["exact_duplicates"] + manifest["near_duplicates"]]
    assert dropped == sorted(manifest["empty"] + manifest["over_long"] + copies)
    assert len(cleaned.records) == manifest["counts"]["expected_after_cleaning"]
    assert cleaned.duplicates_removed == len(copies)
    kept_text = json.dumps([r["messages"] for r in cleaned.records], ensure_ascii=False)
    assert "@example" not in kept_text and "<p>" not in kept_text and "\\u0007" not in kept_text and "**" not in kept_text
    assert digest(path) == before


def test_messy_csv_and_notes_companions():
    manifest = _manifest()
    facts = manifest.get("companion_files", {})
    csv_facts, notes_facts = facts.get("messy_export.csv", {}), facts.get("notes.txt", {})
    csv_result = data.load_records(data.data_samples("raw", "messy_export.csv"))
    assert csv_result.raw_records == csv_facts.get("data_rows", 30)
    assert [b.line for b in csv_result.bad] == [row + 1 for row in csv_facts.get("missing_column", [6])]
    assert csv_result.bad[0].field == "output"
    notes = data.load_records(data.data_samples("raw", "notes.txt"))
    assert notes.raw_records == notes_facts.get("blocks", 20) and len(notes.bad) == 1
    assert notes.bad[0].field == "A" and "daffodils" in notes.bad[0].raw


def test_ensure_dataset_builds_the_default_split(tmp_path, default_tokenizer, capsys):
    _manifest()
    folder = data.ensure_dataset(tmp_path, tokenizer=default_tokenizer)
    assert "No cleaned dataset in" in capsys.readouterr().out
    split = data.load_split(folder)
    report = json.loads((folder / "report.json").read_text())
    assert split["train"].num_rows > 300 and split["validation"].num_rows > 30
    assert report["train_examples"] == split["train"].num_rows and report["seed"] == 0
    sources = set(split["train"]["source"]) | set(split["validation"]["source"])
    assert not any(s.startswith("persona_zh") for s in sources), "the Chinese sample is not in the default set"
    persona = data.load_records(data.data_samples("persona", "train.jsonl"))
    assert sum(s.startswith("train.jsonl:") for s in sources) == len(persona.records), "a clean persona example was lost"
    manifest = _manifest()
    assert report["bad_records"] == len(manifest["malformed_json"]) + len(manifest["schema_errors"])
    assert report["counts"]["duplicates_removed"] == len(manifest["exact_duplicates"]) + len(manifest["near_duplicates"])


@pytest.mark.slow
def test_notebook_01_small_run_records_what_it_found(executed):
    _manifest()  # skips when the manifest is not there
    entry = executed("01_data")
    assert entry["status"] == "ok", entry.get("error")
    figures = entry["figures"]
    for key in ("raw_records", "bad_records", "duplicates_removed", "pii_masked", "train_examples", "validation_examples"):
        assert key in figures, key
    assert figures["duplicates_removed"] == figures["exact_duplicates"] + figures["near_duplicates"] > 0
    assert figures["pii_masked"] > 0 and figures["train_examples"] > 0 and figures["validation_examples"] > 0
    assert figures["missed_planted_problems"] == 0
