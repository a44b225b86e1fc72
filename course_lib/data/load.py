"""Reading: JSONL, JSON, CSV/TSV and Q&A text files into one chat shape, bad records set aside.

Every record becomes ``{"messages": [...], "source": "file:line"}``; a record that cannot be read
becomes a ``BadRecord`` naming its file, line and field. Nothing here writes to an input file.
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

from course_lib import versions

versions.warn_once()  # one sentence if transformers, peft, ... differ from the tested versions

ROLES = ("system", "user", "assistant")
FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "csv",
           ".txt": "qa", ".md": "qa"}
# Column names other exports use for the same thing, mapped to ours.
ALIASES = {"prompt": "instruction", "question": "instruction", "query": "instruction",
           "context": "input", "response": "output", "answer": "output", "completion": "output"}


# =========================================================================== loading


@dataclass
class BadRecord:
    """A record that could not be read, with where it is and what is wrong with it."""

    file: str
    line: int
    field: str | None
    problem: str
    raw: str = ""
    kind: str = "schema"  # "malformed_json", "schema", "encoding", "csv", "text"

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"

    def __str__(self) -> str:
        what = f"field '{self.field}': " if self.field else ""
        return f"{self.where}: {what}{self.problem}"


@dataclass
class LoadResult:
    """What ``load_records`` read: the good records, the bad ones, and what it noticed on the way."""

    files: list[str]
    records: list[dict] = field(default_factory=list)
    bad: list[BadRecord] = field(default_factory=list)
    blank_lines: int = 0
    formats: Counter = field(default_factory=Counter)  # "instruction" / "chat" / "qa" records
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


def record_from_object(obj, file: str, line: int, result: LoadResult) -> dict | BadRecord:
    """Validate one parsed object and turn it into our chat shape, or say exactly what is wrong."""

    def bad(field_name, problem):
        return BadRecord(file, line, field_name, problem, kind="schema")

    if not isinstance(obj, dict):
        return bad(None, f"expected a JSON object with instruction/output or messages, got {_kind_of(obj)}")
    obj = {ALIASES.get(k, k): v for k, v in obj.items()}
    source = f"{file}:{line}"
    if "messages" in obj:
        messages = obj["messages"]
        if not isinstance(messages, list):
            return bad("messages", f"expected a list of {{role, content}}, got {_kind_of(messages)}")
        clean = []
        for i, message in enumerate(messages):
            if not isinstance(message, dict):
                return bad(f"messages[{i}]", f"expected an object with role and content, got {_kind_of(message)}")
            role, content = message.get("role"), message.get("content")
            if role not in ROLES:
                hint = " (did you mean 'assistant'?)" if role in ("bot", "model", "gpt", "ai") else ""
                if role in ("human",):
                    hint = " (did you mean 'user'?)"
                return bad(f"messages[{i}].role", f"{role!r} is not one of {', '.join(ROLES)}{hint}")
            if not isinstance(content, str):
                return bad(f"messages[{i}].content", "missing" if content is None
                           else f"expected text, got {_kind_of(content)}")
            clean.append({"role": role, "content": content})
        if not any(m["role"] == "assistant" for m in clean):
            return bad("messages", "no assistant message: nothing for the model to learn")
        if not any(m["role"] == "user" for m in clean):
            return bad("messages", "no user message: an answer to nothing")
        if clean[-1]["role"] != "assistant":
            return bad(f"messages[{len(clean) - 1}]", f"the conversation ends with a {clean[-1]['role']} message "
                       "that nothing answers")
        extra = [k for k in obj if k != "messages"]
        kind = "chat"
    else:
        if "instruction" not in obj and "output" not in obj:
            keys = ", ".join(map(str, obj)) or "none"
            return bad(None, f"neither 'messages' nor 'instruction'/'output' (fields found: {keys})")
        for name in ("instruction", "output"):
            if obj.get(name) is None:
                return bad(name, "missing")
            if not isinstance(obj[name], str):
                return bad(name, f"expected text, got {_kind_of(obj[name])} ({_short(json.dumps(obj[name]), 40)})")
        extra_input = obj.get("input")
        if extra_input is not None and not isinstance(extra_input, str):
            return bad("input", f"expected text, got {_kind_of(extra_input)}")
        user = obj["instruction"] + (f"\n\n{extra_input}" if extra_input and extra_input.strip() else "")
        clean = [{"role": "user", "content": user}, {"role": "assistant", "content": obj["output"]}]
        extra = [k for k in obj if k not in ("instruction", "input", "output")]
        kind = "instruction"
    result.formats[kind] += 1
    if extra:
        result.extra_fields.update(extra)
        result.extra_field_sources.append(source)
    return {"messages": clean, "source": source}


def _decode(data: bytes, path: Path, encoding: str) -> str:
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise ValueError(
            f"{path.name}:{line}: not {encoding} text (byte 0x{data[error.start]:02x}). The file was probably "
            f"saved in another encoding: try load_records(path, encoding='cp1252') or 'latin-1'."
        ) from None


def _add(result: LoadResult, item):
    (result.bad if isinstance(item, BadRecord) else result.records).append(item)


def _load_jsonl(data: bytes, path: Path, encoding: str, result: LoadResult) -> None:
    # Split on "\n" only: str.splitlines() would also split on \r, \x0b, \x1c, \u2028 ... that can
    # hide inside a record, and every line number after it would be wrong.
    lines = data.split(b"\n")
    if lines and not lines[-1]:
        lines.pop()  # the newline that ends the last line does not start another one
    for number, raw_bytes in enumerate(lines, start=1):
        if number == 1 and raw_bytes.startswith(b"\xef\xbb\xbf"):
            raw_bytes = raw_bytes[3:]  # a byte-order mark some Windows tools write
        try:
            raw = raw_bytes.decode(encoding).rstrip("\r")
        except UnicodeDecodeError as error:
            _add(result, BadRecord(path.name, number, None, f"not {encoding} text (byte 0x{raw_bytes[error.start]:02x} "
                                   f"at column {error.start + 1})", _short(repr(raw_bytes)), kind="encoding"))
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


def _load_json(text: str, path: Path, result: LoadResult) -> None:
    """A JSON array of records; each element's line number is kept by decoding them one by one."""
    decoder = json.JSONDecoder(strict=False)
    start = len(text) - len(text.lstrip())
    if not text[start:start + 1] == "[":
        try:
            obj = json.loads(text, strict=False)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path.name}:{error.lineno}: malformed JSON: {error.msg} (column {error.colno}). "
                             f"If it holds one record per line, name it .jsonl.") from None
        lists = [v for v in obj.values() if isinstance(v, list)] if isinstance(obj, dict) else []
        if len(lists) != 1:
            _add(result, record_from_object(obj, path.name, 1 + text[:start].count("\n"), result))
            return
        start = text.index("[", start)  # {"data": [...]}: read the one list it holds, with its line numbers
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


def load_records(path: str | os.PathLike, encoding: str = "utf-8") -> LoadResult:
    """Read a JSONL / JSON / CSV / Q&A-text file into chat records, setting bad records aside.

    Never raises for a bad record (each becomes a ``BadRecord`` naming file, line and field);
    raises FileNotFoundError or ValueError, naming the file, when the file itself cannot be read.
    Opens the file read-only: the input is never modified.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if path.is_dir():
        raise ValueError(f"{path} is a folder: pass one of the files in it")
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise ValueError(f"{path.name}: unknown format '{path.suffix}': use .jsonl, .json, .csv, .tsv or .txt")
    data = path.read_bytes()
    result = LoadResult([path.name])
    if kind == "jsonl":
        _load_jsonl(data, path, encoding, result)
        return result
    text = _decode(data, path, encoding).lstrip("\ufeff")
    {"json": _load_json, "csv": _load_csv, "qa": _load_qa}[kind](text, path, result)
    return result


def load_all(*paths, encoding: str = "utf-8") -> LoadResult:
    """Load several files into one result (records keep their own file:line sources)."""
    results = [load_records(p, encoding=encoding) for p in paths]
    return sum(results[1:], results[0]) if results else LoadResult([])
