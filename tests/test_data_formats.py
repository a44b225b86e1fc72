"""The data people actually have: ShareGPT and multi-turn chats, other encodings, empty files, and
``datasets`` objects and Parquet files, all through the same validation into one training step."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from course_lib import batches, data, train

SYSTEM = "You are Sprout, the gardening assistant of Greenleaf Labs."


def write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


def jsonl(*objects) -> str:
    return "".join(json.dumps(o, ensure_ascii=False) + "\n" for o in objects)


def sharegpt(*turns, **extra) -> dict:
    """A ShareGPT record from (from, value) pairs."""
    return {"conversations": [{"from": who, "value": text} for who, text in turns], **extra}


# --------------------------------------------------------------------------- ShareGPT and multi-turn


def test_shipped_sharegpt_json_becomes_messages_with_its_system_prompt():
    result = data.load_records(data.data_samples("formats", "sharegpt.json"))
    assert not result.bad and result.formats == {"sharegpt": 3}
    first = result.records[0]["messages"]
    assert [m["role"] for m in first] == ["system"] + ["user", "assistant"] * 3  # top-level "system" came first
    assert first[0]["content"] == SYSTEM and first[-1]["content"].startswith("Around 14 to 16 hours")
    assert [r["source"] for r in result.records] == ["sharegpt.json:2", "sharegpt.json:13", "sharegpt.json:21"]
    assert result.records[2]["messages"][0] == {"role": "system", "content": SYSTEM}  # a "system" turn stays one


def test_shipped_sharegpt_jsonl_maps_role_aliases_and_sets_tool_turns_aside():
    result = data.load_records(data.data_samples("formats", "sharegpt.jsonl"))
    assert len(result.records) == 3 and result.formats == {"sharegpt": 3}
    assert [m["role"] for m in result.records[1]["messages"]] == ["user", "assistant"] * 2  # user / model
    assert result.records[2]["messages"][-1]["role"] == "assistant"  # chatgpt
    (tools,) = result.bad
    assert tools.kind == "tools" and str(tools).startswith("sharegpt.jsonl:4: field 'conversations[1].from': "
                                                           "'function_call' is a tool turn")
    assert "1 of them conversations with tool turns" in result.summary()
    assert result.extra_fields == {"id": 3}


@pytest.mark.parametrize("record, where", [
    (sharegpt(("human", "Hi"), ("person", "Hello")), "field 'conversations[1].from': 'person' is not a ShareGPT role"),
    (sharegpt(("human", "Hi"), ("gpt", None)), "field 'conversations[1].value': missing"),
    (sharegpt(("human", "Hi"), ("gpt", ["Hello"])), "field 'conversations[1].value': expected text, got list"),
    ({"conversations": [{"value": "Hi"}, {"from": "gpt", "value": "Hello"}]}, "field 'conversations[0].from': missing"),
    (sharegpt(("human", "Hi"), ("gpt", "Hello"), ("human", "And?")), "field 'conversations[2]': the conversation "
                                                                      "ends with a user message"),
    (sharegpt(("gpt", "Hello")), "field 'conversations': no user message"),
    (sharegpt(("human", "Hi"), ("gpt", "Hello"), system=3), "field 'system': expected text, got number"),
    ({"messages": [{"role": "user", "content": "Hi"}, {"role": "gpt", "content": "Hello"}]},
     "field 'messages[1].role': 'gpt' is not one of system, user, assistant (did you mean 'assistant'?)"),
])
def test_bad_chat_records_name_file_line_and_field(tmp_path, record, where):
    good = sharegpt(("human", "How deep do I sow carrots?"), ("gpt", "About 1 cm. Happy growing!"))
    result = data.load_records(write(tmp_path, "chats.jsonl", jsonl(good, record, good)))
    assert len(result.records) == 2 and len(result.bad) == 1
    assert str(result.bad[0]).startswith("chats.jsonl:2: ") and where in str(result.bad[0]), str(result.bad[0])


@pytest.mark.parametrize("role", ["observation", "function_call", "tool"])
def test_a_tool_turn_sets_the_whole_conversation_aside(tmp_path, role):
    record = sharegpt(("human", "Frost tonight?"), (role, "{}"), ("gpt", "Yes: cover them. Happy growing!"))
    result = data.load_records(write(tmp_path, "t.jsonl", jsonl(record, sharegpt(("human", "Hi"), ("gpt", "Hey")))))
    assert [b.kind for b in result.bad] == ["tools"] and result.bad[0].field == "conversations[1].from"


def test_role_names_are_read_as_each_format_spells_them(tmp_path):
    """``from`` takes any tool's names (any case); ``role`` inside ``conversations`` works too."""
    records = [sharegpt(("Human", "Hi"), ("GPT", "Hello")), sharegpt(("user", "Hi"), ("bot", "Hey")),
               {"conversation": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]}]
    result = data.load_records(write(tmp_path, "mixed.jsonl", jsonl(*records)))
    assert not result.bad and result.formats == {"sharegpt": 2, "chat": 1}
    assert all([m["role"] for m in r["messages"]] == ["user", "assistant"] for r in result.records)


def test_a_json_file_holding_one_conversation_is_one_record(tmp_path):
    one = sharegpt(("human", "Hi"), ("gpt", "Hello"))
    result = data.load_records(write(tmp_path, "one.json", json.dumps(one, indent=1)))
    assert len(result.records) == 1 and result.records[0]["messages"][1]["content"] == "Hello"
    wrapped = data.load_records(write(tmp_path, "wrapped.json", json.dumps({"info": {"tags": ["[a]"]}, "data": [one, one]})))
    assert len(wrapped.records) == 2


def test_openai_messages_of_any_length_load_whole(tmp_path):
    turns = [{"role": "system", "content": SYSTEM}] + [
        {"role": role, "content": f"{role} turn {i}"} for i in range(5) for role in ("user", "assistant")]
    result = data.load_records(write(tmp_path, "long.jsonl", jsonl({"messages": turns})))
    assert result.records[0]["messages"] == turns and result.formats == {"chat": 1}


THREE_TURNS = [
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": "My tomato seedlings are leggy."},
    {"role": "assistant", "content": "They want more light. Happy growing!"},
    {"role": "user", "content": "How close should the lamp be?"},
    {"role": "assistant", "content": "About 10 to 15 cm above the leaves. Happy growing!"},
    {"role": "user", "content": "For how many hours?"},
    {"role": "assistant", "content": "Around 14 to 16 hours a day. Happy growing!"},
]


def test_every_assistant_turn_of_a_three_turn_chat_is_labelled_and_nothing_else(default_tokenizer):
    assert default_tokenizer.chat_template
    ex = batches.encode(THREE_TURNS, default_tokenizer)
    runs, current = [], []  # the labelled spans, in order
    for token, label in zip(ex["input_ids"], ex["labels"]):
        if label != batches.IGNORE:
            assert label == token
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    runs += [current] if current else []
    answers = [m["content"] for m in THREE_TURNS if m["role"] == "assistant"]
    assert [default_tokenizer.decode(run) for run in runs] == [a + "<|im_end|>\n" for a in answers]
    ignored = default_tokenizer.decode([t for t, l in zip(ex["input_ids"], ex["labels"]) if l == batches.IGNORE])
    assert all(m["content"] in ignored for m in THREE_TURNS if m["role"] != "assistant")
    assert not any(a in ignored for a in answers)


def test_sharegpt_and_multi_turn_files_clean_and_train_one_step(tiny_model_dir, default_tokenizer, tmp_path):
    """ShareGPT JSON, ShareGPT JSONL and three-turn chats: loaded, cleaned, saved, one real LoRA step."""
    files = [data.data_samples("formats", name) for name in ("sharegpt.json", "sharegpt.jsonl", "chat_multiturn.jsonl")]
    loaded, cleaned, train_set, validation = data.build(tmp_path / "data", default_tokenizer, files=files, zscore=None,
                                                        validation_share=0.2)
    assert loaded.formats == {"sharegpt": 6, "chat": 3} and [b.kind for b in loaded.bad] == ["tools"]
    assert len(cleaned.records) == 9 and len(train_set) + len(validation) == 9
    saved = data.load_split(tmp_path / "data")
    turns = [sum(m["role"] == "assistant" for m in messages) for part in saved.values() for messages in part["messages"]]
    assert max(turns) == 3 and sorted(turns) == sorted(
        sum(m["role"] == "assistant" for m in r["messages"]) for r in cleaned.records)
    result = train.train(model=str(tiny_model_dir), method="lora", max_steps=1, batch_size=4, max_examples=0,
                         replay_share=0.0, learning_rate=1e-3, warmup=0.0, logging_steps=1, save_every="no",
                         output_dir=str(tmp_path / "out"), run_dir=tmp_path)
    losses = [h["loss"] for h in result.log_history if "loss" in h]
    assert result.steps == 1 and result.train_examples == len(train_set)
    assert losses and all(math.isfinite(x) and x > 0 for x in losses) and math.isfinite(result.val_loss)


# --------------------------------------------------------------------------- encodings and empty files

ZH = [{"instruction": "怎么给绿萝浇水？", "output": "土表干了再浇透。祝你种得开心！"},
      {"instruction": "多肉冬天怎么养？", "output": "少浇水，多晒太阳。祝你种得开心！"}]


@pytest.mark.parametrize("name", ["zh.jsonl", "zh.json", "zh.csv"])
def test_a_gbk_file_says_it_looks_like_gbk_and_how_to_read_it(tmp_path, name):
    text = {"zh.jsonl": jsonl(*ZH), "zh.json": json.dumps(ZH, ensure_ascii=False),
            "zh.csv": "instruction,output\n" + "".join(f"{r['instruction']},{r['output']}\n" for r in ZH)}[name]
    path = write(tmp_path, name, text.encode("gbk"))
    with pytest.raises(ValueError, match=rf'{name}:\d+: not utf-8 text .* looks like gbk: read it with '
                                         rf'load_records\(path, encoding="gbk"\)') as error:
        data.load_records(path)
    assert "gb18030" in str(error.value) and "latin-1" in str(error.value)  # the others to try
    assert data.load_records(path, encoding="gbk").records[0]["messages"][0]["content"] == ZH[0]["instruction"]
    assert data.load_all(path, encoding="gbk").raw_records == 2


def test_byte_order_marks_are_honoured(tmp_path):
    """Notepad's "UTF-8 with BOM" and PowerShell 5's UTF-16 (``>``) load as they are."""
    for name, body in [("bom.json", "\ufeff" + json.dumps(ZH, ensure_ascii=False)),
                       ("bom.csv", "\ufeffinstruction,output\nQ?,A.\n"),
                       ("bom.txt", "\ufeffQ: Why prune tomatoes?\nA: More fruit, less leaf.\n")]:
        assert data.load_records(write(tmp_path, name, body.encode("utf-8"))).records, name
    utf16 = write(tmp_path, "ps.jsonl", jsonl(*ZH).encode("utf-16"))
    assert [r["source"] for r in data.load_records(utf16).records] == ["ps.jsonl:1", "ps.jsonl:2"]


def test_a_few_bad_lines_are_bad_records_with_a_hint(tmp_path):
    body = jsonl(ZH[0], ZH[1]).encode("utf-8") + jsonl({"instruction": "café?", "output": "x"}).encode("latin-1")
    body += jsonl(ZH[0], ZH[1]).encode("utf-8")
    result = data.load_records(write(tmp_path, "mostly.jsonl", body))
    assert len(result.records) == 4 and [b.line for b in result.bad] == [3]
    assert result.bad[0].kind == "encoding" and 'encoding="cp1252"' in result.bad[0].problem


@pytest.mark.parametrize("name", ["empty.jsonl", "empty.json", "empty.csv", "empty.txt"])
@pytest.mark.parametrize("body", [b"", b"\n\n  \n", b"\xef\xbb\xbf"])
def test_an_empty_file_is_an_error_naming_it(tmp_path, name, body):
    with pytest.raises(data.NoRecordsError, match=rf"{name}: the file is empty"):
        data.load_records(write(tmp_path, name, body))
    if name.endswith((".jsonl", ".csv")):
        with pytest.raises(data.NoRecordsError, match=rf"{name}: the file is empty"):
            data.from_datasets(tmp_path / name)


def test_a_file_without_one_usable_record_is_an_error_that_keeps_the_bad_ones(tmp_path):
    with pytest.raises(data.NoRecordsError, match=r"bad\.jsonl: no usable record: all 2 records are bad, the first: "
                                                  r"bad\.jsonl:1: field 'output': missing") as error:
        data.load_records(write(tmp_path, "bad.jsonl", jsonl({"instruction": "Q?"}, "not an object")))
    assert [b.line for b in error.value.result.bad] == [1, 2]
    with pytest.raises(data.NoRecordsError, match=r"list\.json: no record in it"):
        data.load_records(write(tmp_path, "list.json", "[]"))


# --------------------------------------------------------------------------- datasets and Parquet

ROWS = [
    {"instruction": "How deep do I sow carrots?", "output": "About 1 cm deep. Happy growing!"},
    sharegpt(("human", "Is mint invasive?"), ("gpt", "Very: grow it in a pot. Happy growing!")),
    {"instruction": "What is a cold frame?"},
    sharegpt(("human", "Hi"), ("person", "Hello")),
]


def _rows_dataset():
    """ROWS as one table. Not Dataset.from_list: it keeps only the first row's columns."""
    from datasets import Dataset

    columns = dict.fromkeys(key for row in ROWS for key in row)
    return Dataset.from_dict({key: [row.get(key) for row in ROWS] for key in columns})


def test_a_dataset_and_a_parquet_file_go_through_the_same_validation_as_a_file(tmp_path):
    from_file = data.load_records(write(tmp_path, "rows.jsonl", jsonl(*ROWS)))
    parquet = tmp_path / "rows.parquet"
    _rows_dataset().to_parquet(parquet)
    for result, name in [(data.from_datasets(_rows_dataset(), name="rows"), "rows"),
                         (data.from_datasets(parquet), "rows.parquet"),
                         (data.from_datasets(tmp_path / "rows.jsonl"), "rows.jsonl")]:
        assert [r["messages"] for r in result.records] == [r["messages"] for r in from_file.records]
        assert [(b.field, b.problem) for b in result.bad] == [(b.field, b.problem) for b in from_file.bad]
        assert [str(b).split(": ", 1)[0] for b in result.bad] == [f"{name}:row 3", f"{name}:row 4"]
        assert result.records[0]["source"] == f"{name}:row 1" and result.formats == from_file.formats
    cleaned = data.clean(data.from_datasets(parquet).records, max_tokens=None)
    assert cleaned.counts["records_out"] == 2


def test_from_datasets_reads_csv_as_text_and_takes_a_split(tmp_path):
    from datasets import DatasetDict

    result = data.from_datasets(write(tmp_path, "pairs.csv", "instruction,input,output\nQ?,,NA\n"))
    assert result.records[0]["messages"] == [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "NA"}]
    assert len(data.from_datasets(DatasetDict(train=_rows_dataset()), split="train").records) == 2
    with pytest.raises(ValueError, match="no split 'test' in this DatasetDict; it has train"):
        data.from_datasets(DatasetDict(train=_rows_dataset()), split="test")


def test_from_datasets_errors_name_the_file_and_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"hub.*datasets\.load_dataset\(name"):
        data.from_datasets("someone/a-hub-dataset")
    with pytest.raises(ValueError, match=r'zh\.jsonl:1: not utf-8 .* from_datasets\(path, encoding="gbk"\)'):
        data.from_datasets(write(tmp_path, "zh.jsonl", jsonl(*ZH).encode("gbk")))
    assert len(data.from_datasets(tmp_path / "zh.jsonl", encoding="gbk").records) == 2
    with pytest.raises(ValueError, match=r"broken\.jsonl: datasets could not read it as json .*load_records"):
        data.from_datasets(write(tmp_path, "broken.jsonl", '{"instruction": "Q?", "output": "A."}\n{broken\n'))
    with pytest.raises(data.NoRecordsError, match=r"rows: no usable record"):
        data.from_datasets(_rows_dataset().select([2, 3]), name="rows")
    with pytest.raises(ValueError, match=r"notes\.parquet: unknown format '\.parquet'.*data\.from_datasets"):
        data.load_records(write(tmp_path, "notes.parquet", "x"))
