"""course_lib.data.load: every loader on small files each test writes itself (file:line:field errors),
and the shipped CSV and notes companions of the messy export."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from data_lab import digest, messy_manifest

from course_lib import data


def write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    path = tmp_path / name
    (path.write_bytes if isinstance(text, bytes) else lambda t: path.write_text(t, encoding="utf-8"))(text)
    return path


def jsonl(*objects) -> str:
    return "".join((o if isinstance(o, str) else json.dumps(o, ensure_ascii=False)) + "\n" for o in objects)



GOOD = {"instruction": "How often should I water basil?", "input": "", "output": "Keep the soil lightly moist. Happy growing!"}


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
    ({"text": "free text"}, "neither 'messages', 'conversations' nor 'instruction'/'output' (fields found: text)"),
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



def test_messy_csv_and_notes_companions():
    manifest = messy_manifest()
    facts = manifest.get("companion_files", {})
    csv_facts, notes_facts = facts.get("messy_export.csv", {}), facts.get("notes.txt", {})
    csv_result = data.load_records(data.data_samples("raw", "messy_export.csv"))
    assert csv_result.raw_records == csv_facts.get("data_rows", 30)
    assert [b.line for b in csv_result.bad] == [row + 1 for row in csv_facts.get("missing_column", [6])]
    assert csv_result.bad[0].field == "output"
    notes = data.load_records(data.data_samples("raw", "notes.txt"))
    assert notes.raw_records == notes_facts.get("blocks", 20) and len(notes.bad) == 1
    assert notes.bad[0].field == "A" and "daffodils" in notes.bad[0].raw
