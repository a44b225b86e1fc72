"""Reading: JSONL, JSON, CSV/TSV, Q&A text files and ``datasets`` rows into one chat shape, bad records set aside.

Every record becomes ``{"messages": [...], "source": "file:line"}``; a record that cannot be read
becomes a ``BadRecord`` naming its file, line and field. Nothing here writes to an input file.
Record shapes: instruction (``instruction``/``input``/``output``, Alpaca), chat (OpenAI ``messages``
of {role, content}, any number of turns) and ShareGPT (``conversations`` of {from, value}: LLaMA-Factory,
Axolotl and most shared chat datasets). ``role`` keeps OpenAI's three names (a "bot" there is an
exporter's bug, reported); ``from`` takes each tool's names (SHAREGPT_ROLES). A conversation with tool
turns is set aside whole, kind "tools": the course trains chat without tools, and dropping only those
turns would leave answers built on results the model never saw.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from course_lib import ui, versions
from course_lib.data.encodings import BOMS, decode, decode_lines, encoding_of

versions.warn_once()  # one sentence if transformers, peft, ... differ from the tested versions

ROLES = ("system", "user", "assistant")
# ShareGPT's "from" names as LLaMA-Factory, Axolotl, FastChat and shared datasets write them, lowercased.
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "bot": "assistant", "model": "assistant", "chatgpt": "assistant", "ai": "assistant"}
TOOL_ROLES = ("observation", "function_call", "function", "tool", "tool_call", "ipython")
FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "csv",
           ".txt": "qa", ".md": "qa"}
# Column names other exports use for the same thing, mapped to ours.
ALIASES = {"prompt": "instruction", "question": "instruction", "query": "instruction",
           "context": "input", "response": "output", "answer": "output", "completion": "output",
           "conversation": "conversations"}


# =========================================================================== loading


def _where(file: str, line: int, unit: str = "line") -> str:
    return f"{file}:{line}" if unit == "line" else f"{file}:{unit} {line}"


@dataclass
class BadRecord:
    """A record that could not be read, with where it is and what is wrong with it."""

    file: str
    line: int
    field: str | None
    problem: str
    raw: str = ""
    kind: str = "schema"  # "malformed_json", "schema", "encoding", "csv", "text", "tools"
    unit: str = "line"  # "row" for datasets rows (a Parquet file has no lines)

    @property
    def where(self) -> str:
        return _where(self.file, self.line, self.unit)

    def __str__(self) -> str:
        what = f"field '{self.field}': " if self.field else ""
        return f"{self.where}: {what}{self.problem}"


class NoRecordsError(ValueError):
    """A file (or dataset) that gives no usable record: an error, not an empty dataset to train on.

    ``.result`` still holds what was read, so the bad records can be looked at (``data.bad_table``).
    """

    def __init__(self, message: str, result: LoadResult):
        super().__init__(message)
        self.result = result


@dataclass
class LoadResult:
    """What ``load_records`` read: the good records, the bad ones, and what it noticed on the way."""

    files: list[str]
    records: list[dict] = field(default_factory=list)
    bad: list[BadRecord] = field(default_factory=list)
    blank_lines: int = 0
    formats: Counter = field(default_factory=Counter)  # "instruction" / "chat" / "sharegpt" / "qa" records
    extra_fields: Counter = field(default_factory=Counter)  # fields we did not keep (id, timestamp...)
    extra_field_sources: list[str] = field(default_factory=list)

    @property
    def raw_records(self) -> int:
        """Records seen in the input (good + bad); blank lines are not records."""
        return len(self.records) + len(self.bad)

    def __add__(self, other: LoadResult) -> LoadResult:
        return LoadResult(self.files + other.files, self.records + other.records, self.bad + other.bad,
                          self.blank_lines + other.blank_lines, self.formats + other.formats,
                          self.extra_fields + other.extra_fields,
                          self.extra_field_sources + other.extra_field_sources)

    def summary(self) -> str:
        formats = ", ".join(f"{n} {kind}" for kind, n in sorted(self.formats.items()))
        text = (f"{', '.join(self.files)}: {self.raw_records} records read, {len(self.records)} loaded "
                f"({formats or 'none'}), {len(self.bad)} bad records set aside")
        if tools := sum(b.kind == "tools" for b in self.bad):
            text += f" ({tools} of them conversations with tool turns)"
        if self.extra_fields:
            text += "; fields not kept: " + ", ".join(f"{k} ({n}x)" for k, n in self.extra_fields.most_common())
        return text

    def __repr__(self) -> str:
        return f"<LoadResult {self.summary()}>"


def _kind_of(value) -> str:
    if value is None:
        return "null"
    return {bool: "true/false", int: "number", float: "number", str: "text", list: "list",
            dict: "object"}.get(type(value), type(value).__name__)


def _short(text: str, n: int = 160) -> str:
    text = str(text)
    return text if len(text) <= n else text[: n - 1] + "…"


def _role(value, sharegpt: bool) -> str | tuple[str, str]:
    """Our role name for VALUE (a ``role`` or, if SHAREGPT, a ``from``), or (problem, kind) when there is none."""
    if value is None:
        return "missing", "schema"
    if not isinstance(value, str):
        return f"expected text, got {_kind_of(value)}", "schema"
    name = value.strip().lower() if sharegpt else value
    if name in TOOL_ROLES:
        return (f"{value!r} is a tool turn: this course trains chats without tools, so the conversation is set "
                "aside (without that turn, the answers after it would rest on a result the model never saw)", "tools")
    if sharegpt:
        return SHAREGPT_ROLES.get(name) or (f"{value!r} is not a ShareGPT role ({', '.join(SHAREGPT_ROLES)})", "schema")
    if name in ROLES:
        return name
    meant = SHAREGPT_ROLES.get(name.strip().lower())  # "bot" -> 'assistant', "human" -> 'user'
    return f"{value!r} is not one of {', '.join(ROLES)}" + (f" (did you mean {meant!r}?)" if meant else ""), "schema"


def _chat(obj: dict, key: str, bad) -> tuple[list[dict], str] | BadRecord:
    """OBJ[KEY], a list of turns, as our messages: OpenAI's {role, content} or ShareGPT's {from, value}.

    Which vocabulary a turn speaks is read from the turn itself (``from`` present, or no ``role``
    in a ``conversations`` list), so a dataset mixing both still loads turn by turn.
    """
    turns = obj[key]
    if not isinstance(turns, list):
        return bad(key, f"expected a list of {{role, content}} or {{from, value}}, got {_kind_of(turns)}")
    messages, sharegpt = [], False
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            return bad(f"{key}[{i}]", f"expected an object with role and content, got {_kind_of(turn)}")
        speaks_sharegpt = turn.get("from") is not None or (turn.get("role") is None and key == "conversations")
        role_key, text_key = ("from", "value") if speaks_sharegpt else ("role", "content")
        role = _role(turn.get(role_key), speaks_sharegpt)
        if isinstance(role, tuple):
            return bad(f"{key}[{i}].{role_key}", *role)
        content = turn.get(text_key)
        if not isinstance(content, str):
            return bad(f"{key}[{i}].{text_key}", "missing" if content is None else f"expected text, got {_kind_of(content)}")
        messages.append({"role": role, "content": content})
        sharegpt |= speaks_sharegpt
    if not any(m["role"] == "assistant" for m in messages):
        return bad(key, "no assistant message: nothing for the model to learn")
    if not any(m["role"] == "user" for m in messages):
        return bad(key, "no user message: an answer to nothing")
    if messages[-1]["role"] != "assistant":
        return bad(f"{key}[{len(turns) - 1}]", f"the conversation ends with a {messages[-1]['role']} message "
                   "that nothing answers")
    return messages, "sharegpt" if sharegpt else "chat"


def _instruction(obj: dict, bad) -> tuple[list[dict], str] | BadRecord:
    """An instruction/input/output record as a user message and an assistant message."""
    if "instruction" not in obj and "output" not in obj:
        keys = ", ".join(map(str, obj)) or "none"
        return bad(None, f"neither 'messages', 'conversations' nor 'instruction'/'output' (fields found: {keys})")
    for name in ("instruction", "output"):
        if obj.get(name) is None:
            return bad(name, "missing")
        if not isinstance(obj[name], str):
            return bad(name, f"expected text, got {_kind_of(obj[name])} ({_short(json.dumps(obj[name]), 40)})")
    extra_input = obj.get("input")
    if extra_input is not None and not isinstance(extra_input, str):
        return bad("input", f"expected text, got {_kind_of(extra_input)}")
    user = obj["instruction"] + (f"\n\n{extra_input}" if extra_input and extra_input.strip() else "")
    return [{"role": "user", "content": user}, {"role": "assistant", "content": obj["output"]}], "instruction"


def record_from_object(obj, file: str, line: int, result: LoadResult, unit: str = "line") -> dict | BadRecord:
    """Validate one parsed object and turn it into our chat shape, or say exactly what is wrong.

    A top-level ``system`` text (LLaMA-Factory's column for the system prompt) becomes the first
    message when the turns carry none.
    """

    def bad(field_name, problem, kind="schema"):
        return BadRecord(file, line, field_name, problem, kind=kind, unit=unit)

    if not isinstance(obj, dict):
        return bad(None, f"expected a JSON object with instruction/output, messages or conversations, "
                         f"got {_kind_of(obj)}")
    obj = {ALIASES.get(k, k): v for k, v in obj.items()}
    key = next((k for k in ("messages", "conversations") if k in obj), None)
    found = _chat(obj, key, bad) if key else _instruction(obj, bad)
    if isinstance(found, BadRecord):
        return found
    messages, kind = found
    system = obj.get("system")
    if system is not None and not isinstance(system, str):
        return bad("system", f"expected text, got {_kind_of(system)}")
    if system and system.strip() and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system})
    result.formats[kind] += 1
    extra = [k for k in obj if k not in ({key, "system"} if key else {"instruction", "input", "output", "system"})]
    source = _where(file, line, unit)
    if extra:
        result.extra_fields.update(extra)
        result.extra_field_sources.append(source)
    return {"messages": messages, "source": source}


def _add(result: LoadResult, item):
    (result.bad if isinstance(item, BadRecord) else result.records).append(item)


def _load_jsonl(data: bytes, path: Path, encoding: str, result: LoadResult) -> None:
    for number, raw, problem in decode_lines(data, path.name, encoding):
        if problem:
            _add(result, BadRecord(path.name, number, None, problem, _short(raw), kind="encoding"))
            continue
        if not raw.strip():
            result.blank_lines += 1
            continue
        try:
            obj = json.loads(raw, strict=False)  # strict=False: raw control chars are cleaned later
        except json.JSONDecodeError as error:
            _add(result, BadRecord(path.name, number, None, f"malformed JSON: {error.msg} (column {error.colno})",
                                   raw, kind="malformed_json"))
            continue
        item = record_from_object(obj, path.name, number, result)
        if isinstance(item, BadRecord):
            item.raw = raw
        _add(result, item)


def _is_record(obj) -> bool:
    """A JSON object that is one record itself, not a wrapper holding a list of them."""
    return isinstance(obj, dict) and bool({ALIASES.get(k, k) for k in obj} & {"messages", "conversations",
                                                                              "instruction", "output"})


def _list_start(text: str, start: int, decoder: json.JSONDecoder) -> int:
    """Where the one list of the JSON object starting at START begins: its keys are walked in order,
    since a "[" found by searching could sit in a string or a nested value before it."""
    gap, i = re.compile(r"[\s,:]*"), start + 1
    while True:
        _, i = decoder.raw_decode(text, gap.match(text, i).end())  # a key
        i = gap.match(text, i).end()
        if text[i] == "[":
            return i
        _, i = decoder.raw_decode(text, i)  # a value that is not the list


def _load_json(text: str, path: Path, result: LoadResult) -> None:
    """A JSON array of records (or an object holding one); line numbers kept by decoding elements one by one."""
    decoder = json.JSONDecoder(strict=False)
    start = len(text) - len(text.lstrip())
    if not text[start:start + 1] == "[":
        try:
            obj = json.loads(text, strict=False)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path.name}:{error.lineno}: malformed JSON: {error.msg} (column {error.colno}). "
                             f"If it holds one record per line, name it .jsonl.") from None
        lists = [v for v in obj.values() if isinstance(v, list)] if isinstance(obj, dict) else []
        if len(lists) != 1 or _is_record(obj):
            _add(result, record_from_object(obj, path.name, 1 + text[:start].count("\n"), result))
            return
        start = _list_start(text, start, decoder)  # {"data": [...]}: read the one list it holds, with its line numbers
    i = start + 1
    while True:
        while i < len(text) and text[i] in " \t\r\n,":
            i += 1
        if i >= len(text) or text[i] == "]":
            return
        line = text.count("\n", 0, i) + 1
        try:
            obj, i = decoder.raw_decode(text, i)
        except json.JSONDecodeError as error:
            rest = text[i:].count("\n") + 1
            _add(result, BadRecord(path.name, line, None, f"malformed JSON: {error.msg} (line {error.lineno}, column "
                                   f"{error.colno}); the rest of the file ({rest} lines) could not be read",
                                   _short(text[i:i + 200]), kind="malformed_json"))
            return
        item = record_from_object(obj, path.name, line, result)
        if isinstance(item, BadRecord):
            item.raw = _short(json.dumps(obj, ensure_ascii=False), 400)
        _add(result, item)


def _load_csv(text: str, path: Path, result: LoadResult) -> None:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header = next(reader, None)
    if not header:
        raise ValueError(f"{path.name}: empty CSV file (no header row)")
    header = [ALIASES.get(h.strip().lower(), h.strip().lower()) for h in header]
    if "instruction" not in header or "output" not in header:
        raise ValueError(f"{path.name}:1: the header needs 'instruction' and 'output' columns "
                         f"(or prompt/response, question/answer); it has: {', '.join(header)}")
    line = reader.line_num + 1
    for row in reader:
        raw = delimiter.join(row)
        if not any(cell.strip() for cell in row):
            result.blank_lines += 1
        elif len(row) < len(header):
            missing = header[len(row):]
            _add(result, BadRecord(path.name, line, missing[-1] if "output" not in missing else "output",
                                   f"missing (row has {len(row)} of {len(header)} columns: "
                                   f"no {', '.join(missing)})", raw, kind="csv"))
        elif len(row) > len(header):
            _add(result, BadRecord(path.name, line, None, f"row has {len(row)} columns, the header has "
                                   f"{len(header)} (an unquoted '{delimiter}' in a field?)", raw, kind="csv"))
        else:
            item = record_from_object(dict(zip(header, row)), path.name, line, result)
            if isinstance(item, BadRecord):
                item.raw = raw
            _add(result, item)
        line = reader.line_num + 1


def _load_qa(text: str, path: Path, result: LoadResult) -> None:
    """Plain text: blocks of "Q: question" then "A: answer" (answers may span lines), blank line between."""
    lines = text.split("\n")
    blocks, current, first = [], [], 0
    for number, line in enumerate(lines, start=1):
        if line.strip():
            if not current:
                first = number
            current.append(line.rstrip("\r"))
        elif current:
            blocks.append((first, current))
            current = []
        else:
            result.blank_lines += 1 if number < len(lines) else 0
    if current:
        blocks.append((first, current))
    for first, block in blocks:
        parts, key = {}, None
        for line in block:
            match = re.match(r"\s*([QqAa])\s*[:：]\s?(.*)", line)
            if match and (key is None or match.group(1).upper() != key):
                key = match.group(1).upper()
                parts[key] = [match.group(2)]
            elif key:
                parts[key].append(line)
        raw = "\n".join(block)
        question = "\n".join(parts.get("Q", [])).strip()
        answer = "\n".join(parts.get("A", [])).strip()
        if not question:
            _add(result, BadRecord(path.name, first, "Q", "missing: block has no 'Q:' line", raw, kind="text"))
        elif not answer:
            _add(result, BadRecord(path.name, first, "A", "missing: block has a question but no 'A:' answer",
                                   raw, kind="text"))
        else:
            result.formats["qa"] += 1
            _add(result, {"messages": [{"role": "user", "content": question},
                                       {"role": "assistant", "content": answer}],
                          "source": f"{path.name}:{first}"})


def _usable(result: LoadResult, name: str) -> LoadResult:
    """RESULT if it holds a record; a file that gives none is an error naming it, never an empty dataset."""
    if result.records:
        return result
    if result.bad:
        raise NoRecordsError(f"{name}: no usable record: all {len(result.bad)} records are bad, the first: "
                             f"{result.bad[0]}. The whole list is in error.result.bad (data.bad_table(error.result)).",
                             result)
    raise NoRecordsError(f"{name}: no record in it: nothing to train on", result)


def _refuse_empty(data: bytes, name: str) -> None:
    """A file of nothing but blanks (or a lone byte-order mark) is an error naming it, not zero records."""
    if not data.strip() or data in (mark for mark, _ in BOMS):
        raise NoRecordsError(f"{name}: the file is empty ({len(data)} bytes): nothing to train on", LoadResult([name]))


def load_records(path: str | os.PathLike, encoding: str = "utf-8") -> LoadResult:
    """Read a JSONL / JSON / CSV / Q&A-text file into chat records, setting bad records aside.

    Never raises for a bad record (each becomes a ``BadRecord`` naming file, line and field);
    raises FileNotFoundError or ValueError, naming the file, when the file itself cannot be read:
    not ENCODING text (the error says which encoding it looks like), or empty, or without one usable
    record (``NoRecordsError``). A byte-order mark (UTF-8 or UTF-16) is honoured whatever ENCODING says.
    Opens the file read-only: the input is never modified.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if path.is_dir():
        raise ValueError(f"{path} is a folder: pass one of the files in it")
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        hint = " (a Parquet file: data.from_datasets(path) reads it)" if path.suffix.lower() == ".parquet" else ""
        raise ValueError(f"{path.name}: unknown format '{path.suffix}': use .jsonl, .json, .csv, .tsv or .txt{hint}")
    data = path.read_bytes()
    _refuse_empty(data, path.name)
    result = LoadResult([path.name])
    if kind == "jsonl":
        _load_jsonl(data, path, encoding, result)
    else:
        {"json": _load_json, "csv": _load_csv, "qa": _load_qa}[kind](decode(data, path.name, encoding), path, result)
    return _usable(result, path.name)


def load_all(*paths, encoding: str = "utf-8") -> LoadResult:
    """Load several files into one result (records keep their own file:line sources)."""
    results = [load_records(p, encoding=encoding) for p in paths]
    return sum(results[1:], results[0]) if results else LoadResult([])


# =========================================================================== datasets


BUILDERS = {".jsonl": "json", ".ndjson": "json", ".json": "json", ".csv": "csv", ".tsv": "csv", ".parquet": "parquet"}


def _dataset_from_file(path: Path, encoding: str):
    """A file on disk read by ``datasets.load_dataset`` (offline: its json/csv/parquet builders are local)."""
    from datasets import load_dataset

    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file. from_datasets reads files on disk; for a dataset on the hub, "
                                "load it yourself (datasets.load_dataset(name, split=\"train\")) and pass the Dataset.")
    builder = BUILDERS.get(path.suffix.lower())
    if builder is None:
        raise ValueError(f"{path.name}: unknown format '{path.suffix}': use .jsonl, .json, .csv, .tsv or .parquet")
    options = {}
    if builder == "parquet" and path.stat().st_size == 0:
        _refuse_empty(b"", path.name)
    if builder != "parquet":
        data = path.read_bytes()
        _refuse_empty(data, path.name)
        decode(data, path.name, encoding, call="from_datasets")  # not ENCODING text: the error says what it looks like
        options["encoding"] = encoding_of(data, encoding)
    if builder == "csv":  # every cell is text, as in load_records ("NA" and "" are answers, not missing values)
        options.update(sep="\t" if path.suffix.lower() == ".tsv" else ",", keep_default_na=False)
    try:
        with ui.quiet_progress():
            return load_dataset(builder, data_files=str(path), split="train", **options)
    except Exception as error:  # pyarrow, pandas and datasets each raise their own kind
        first = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        hint = "" if builder == "parquet" else (" data.load_records(path) reads it record by record and names "
                                                 "each bad line and field.")
        raise ValueError(f"{path.name}: datasets could not read it as {builder} ({first}).{hint}") from error


def from_datasets(source, split: str = "train", name: str | None = None, encoding: str = "utf-8") -> LoadResult:
    """The rows of a ``datasets.Dataset`` (or of a JSON/JSONL/CSV/Parquet file, read by ``datasets``) as records.

    Hub datasets and big Parquet files arrive as Dataset objects, not as lines to parse, so this is
    the second door in, with the same checks: each row goes through ``record_from_object``, and a
    bad row becomes a BadRecord named "NAME:row N: field ...". SOURCE may be a DatasetDict (SPLIT
    is taken) or a path; NAME labels the rows' sources (default: the file name, else "dataset").
    """
    if isinstance(source, (str, os.PathLike)):
        name = name or Path(source).name
        source = _dataset_from_file(Path(source), encoding)
    elif isinstance(source, dict):  # a DatasetDict
        if split not in source:
            raise ValueError(f"no split {split!r} in this DatasetDict; it has {', '.join(source)}")
        source = source[split]
    name = name or "dataset"
    result = LoadResult([name])
    for number, row in enumerate(source, start=1):
        # Arrow gives every row every column: a column this row lacks comes as None, which means "absent".
        row = {k: v for k, v in row.items() if v is not None} if isinstance(row, dict) else row
        item = record_from_object(row, name, number, result, unit="row")
        if isinstance(item, BadRecord):
            item.raw = _short(json.dumps(row, ensure_ascii=False, default=str), 400)
        _add(result, item)
    return _usable(result, name)
