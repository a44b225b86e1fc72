"""The data stage: from a messy export to a clean, split dataset that notebook 02 trains on.

    result = data.load_all(data.data_samples("persona", "train.jsonl"), data.data_samples("raw", "messy_export.jsonl"))
    cleaned = data.clean(result.records, tokenizer, max_tokens=512)
    train, validation = data.split(cleaned.records, validation_share=0.1, seed=0)
    data.save_split(train, validation, run_dir / "data", report=cleaned.summary())

Every record, whatever file it came from, becomes one shape, the chat format the trainer uses:

    {"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}],
     "source": "messy_export.jsonl:17"}

``source`` stays with the record through every step, so anything set aside or changed can be
traced back to its file and line. Nothing here writes to an input file; bad records are reported
and set aside, never silently dropped.
"""

from __future__ import annotations

import csv
import hashlib
import html
import io
import itertools
import json
import math
import os
import random
import re
import time
import unicodedata
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from course_lib import versions
from course_lib.paths import data_samples

versions.warn_once()  # one sentence if transformers, peft, ... differ from the tested versions

ROLES = ("system", "user", "assistant")
FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "csv",
           ".txt": "qa", ".md": "qa"}
# Column names other exports use for the same thing, mapped to ours.
ALIASES = {"prompt": "instruction", "question": "instruction", "query": "instruction",
           "context": "input", "response": "output", "answer": "output", "completion": "output"}
DEFAULTS = {"max_tokens": 512, "near_dup_threshold": 0.8, "zscore": 3.0, "validation_share": 0.1, "seed": 0}


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


def bad_table(result: LoadResult, width: int = 70):
    """The bad records as a table: where, which field, what is wrong, and the raw text."""
    import pandas as pd

    rows = [{"where": b.where, "kind": b.kind, "field": b.field or "", "problem": b.problem,
             "raw": _short(b.raw.replace("\n", "⏎"), width)} for b in result.bad]
    return pd.DataFrame(rows, columns=["where", "kind", "field", "problem", "raw"])


def raw_lines(path, numbers, width: int | None = 110) -> list[str]:
    """Some lines of a file exactly as they are on disk (numbered from 1), for looking."""
    lines = Path(path).read_bytes().split(b"\n")
    out = []
    for n in numbers:
        if 1 <= n <= len(lines):
            text = lines[n - 1].decode("utf-8", errors="replace")
            out.append(f"{n:>4}: {_short(text, width) if width else text}")
    return out


def visible(text: str) -> str:
    """The text with invisible characters spelled out (\\x00, \\u200b, \\u00a0, \\t, \\n) so you can
    see them; so is a combining accent after a Latin letter ("cafe\\u0301" looks just like "café")."""
    out = []
    for i, c in enumerate(text):
        category = unicodedata.category(c)
        hidden = c != " " and category in ("Cc", "Cf", "Zs", "Zl", "Zp")
        combining = category == "Mn" and i > 0 and text[i - 1].isascii()
        out.append(c.encode("unicode_escape").decode("ascii") if hidden or combining else c)
    text = "".join(out)
    stripped = text.strip(" ")  # spaces at the ends are invisible too: show them as ␣
    if stripped != text:
        left = len(text) - len(text.lstrip(" "))
        text = "␣" * left + stripped + "␣" * (len(text) - left - len(stripped))
    return text


# =========================================================================== cleaning: text steps

CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
CJK_CHARS = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
FULL_PUNCT = "\u3001-\u303f\uff01-\uff0f\uff1a-\uff20\uff3b-\uff40\uff5b-\uff65"  # "，。！？：；（）～" ...
CURLY = {"\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201c": '"', "\u201d": '"', "\u201e": '"'}
ZERO_WIDTH = re.compile(r"[\u200b\u200c\u200d\u2060\ufeff\u00ad]")
ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")  # terminal colour codes: ESC [ 31 m
TAG = re.compile(r"</?[a-zA-Z][a-zA-Z0-9-]*(?:\s[^<>]*)?/?>")
BLOCK_TAG = re.compile(r"<\s*(?:br|/p|/div|/li|/h[1-6]|/tr)\s*/?>", re.I)
SCRIPT = re.compile(r"<(script|style)\b.*?</\1\s*>", re.I | re.S)
MD_LINK = re.compile(r"!?\[([^\]\n]+)\]\((?:https?://|/)[^)\s]*\)")
MD_EMPHASIS = re.compile(r"(\*\*|__)(?=\S)(.+?)(?<=\S)\1")
MD_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+", re.M)
MD_FENCE = re.compile(r"^\s*```[a-z]*\s*$", re.M)
# In Chinese text punctuation is full width; elsewhere letters and digits should be half width.
TO_FULL_WIDTH = {",": "，", "?": "？", "!": "！", ":": "：", ";": "；", "(": "（", ")": "）"}


def normalize_unicode(text: str) -> str:
    """One spelling per character, so the same word always becomes the same tokens.

    - NFC: "e" + combining accent becomes the single character "é";
    - full-width Latin letters and digits ("ＳＰＲＯＵＴ", "２") become ASCII;
    - curly quotes become straight ones (the persona data writes "I'm", not "I’m").
    Full NFKC would do the first two as well, but it also turns "m²" into "m2" and "½" into "1/2",
    and flattens Chinese punctuation. In Chinese text the rules turn round: punctuation between
    Chinese characters is full width ("，" "。"), and curly quotes are the proper quotation marks.
    """
    text = unicodedata.normalize("NFC", text)
    chinese = bool(CJK.search(text))
    out = []
    for char in text:
        code = ord(char)
        if 0xFF01 <= code <= 0xFF5E:  # the full-width forms of ASCII ! .. ~
            half = chr(code - 0xFEE0)
            out.append(half if half.isalnum() or not chinese else char)
        elif char in CURLY and not chinese:
            out.append(CURLY[char])
        else:
            out.append(char)
    text = "".join(out)
    if chinese:
        for half, full in TO_FULL_WIDTH.items():
            text = re.sub(rf"(?<=[{CJK_CHARS}]){re.escape(half)}|{re.escape(half)}(?=[{CJK_CHARS}])", full, text)
        text = re.sub(rf"(?<=[{CJK_CHARS}])\.(?=\s|$|[{CJK_CHARS}])", "。", text)
        # ...but full-width punctuation closing Latin text ("Happy growing！") goes back to ASCII.
        text = re.sub(rf"(?<=[A-Za-z0-9])[\uff01-\uff0f\uff1a-\uff20](?![{CJK_CHARS}])",
                      lambda m: chr(ord(m.group(0)) - 0xFEE0), text)
    return text


def strip_html(text: str) -> str:
    """Remove HTML tags and entities and markdown remnants (**bold**, # headings, [links](url), fences).

    Line-ending tags (<br>, </p>, </li>) become line breaks so paragraphs stay apart. Text that only
    looks like a tag ("a < b") is kept: a tag must start with a letter right after '<'.
    """
    text = SCRIPT.sub("", text)
    text = BLOCK_TAG.sub("\n", text)
    text = TAG.sub("", text)
    text = html.unescape(text)
    text = MD_LINK.sub(r"\1", text)
    text = MD_EMPHASIS.sub(r"\2", text)
    text = MD_HEADING.sub("", text)
    return MD_FENCE.sub("", text)


def strip_control_chars(text: str) -> str:
    """Drop invisible characters: control codes (NUL, BEL, backspace, DEL, ESC colour sequences),
    zero-width spaces, soft hyphens. Keeps newlines and tabs; Windows line ends (\\r\\n) become
    \\n, and a stray \\r inside a line becomes a space."""
    text = ANSI.sub("", text).replace("\r\n", "\n").replace("\r", " ")
    text = re.sub(r"(?<=[A-Za-z0-9])\u200b+(?=[A-Za-z0-9])", " ", text)  # "Trim\u200bthe" stood for a space
    text = ZERO_WIDTH.sub("", text)
    return "".join(c for c in text if c in "\n\t" or unicodedata.category(c) != "Cc")


def normalize_whitespace(text: str) -> str:
    """Every space-like character (no-break, thin, ideographic, tab) becomes one plain space; runs
    collapse, lines lose trailing spaces, at most one empty line between paragraphs, no space at the
    ends, and none around Chinese punctuation."""
    text = "".join(" " if c == "\t" or (unicodedata.category(c) == "Zs") else c for c in text)
    text = text.replace("\u2028", "\n").replace("\u2029", "\n\n")
    text = re.sub(r" {2,}", " ", text)
    text = re.sub(r" *\n *", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    # Chinese puts no spaces around its punctuation: "浇水 ， 每周" -> "浇水，每周".
    text = re.sub(rf"(?<=[{CJK_CHARS}{FULL_PUNCT}]) +(?=[{FULL_PUNCT}])|(?<=[{FULL_PUNCT}]) +", "", text)
    return text.strip()


EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
# Phone numbers: +1 (555) 010-2345, 555.010.2345, 555 010 2345, or a local 555-0123. Plain
# number ranges ("18-24 inches") do not match: a phone needs 3 then 4 digits, or 10+ digits. A range
# like "200-1000 lux" does look like a local number and gets masked: for personal data a false alarm
# costs less than a leak.
PHONE = re.compile(
    r"(?<![\w/.-])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{3}\)\s?|\d{3}[\s.-])\d{3}[\s.-]\d{4}(?![\w/-])"
    r"|(?<![\w/.-])\d{3}-\d{4}(?![\w/-])"
)
PII_PATTERNS = {"email": (EMAIL, "[EMAIL]"), "phone": (PHONE, "[PHONE]")}


def mask_pii(text: str) -> str:
    """Replace e-mail addresses with [EMAIL] and phone numbers with [PHONE]."""
    return count_pii(text)[0]


def count_pii(text: str) -> tuple[str, Counter]:
    """``mask_pii`` that also says how many of each kind it replaced."""
    counts = Counter()
    for kind, (pattern, placeholder) in PII_PATTERNS.items():
        text, n = pattern.subn(placeholder, text)
        counts[kind] += n
    return text, counts


# Records whose text matches one of these are set aside. Add your own: (pattern, why) looks at
# every message, (pattern, why, role) only at that role's messages ("user", "assistant", "system").
DEFAULT_FILTERS = [
    (r"(?i)\blorem ipsum\b", "placeholder text"),
    (r"(?i)\bas an ai (?:language )?model\b", "generic-assistant boilerplate, not the persona's voice", "assistant"),
    (r"(?i)^\s*(?:n/?a|null|none|todo|tbd|\[deleted\]|\[removed\]|-+)\s*$", "placeholder instead of an answer",
     "assistant"),
]

TEXT_STEPS = [
    ("unicode", normalize_unicode, "one spelling per character: composed accents, half-width letters/digits"),
    ("html", strip_html, "HTML tags/entities and markdown remnants are noise the model would learn to write"),
    ("control_chars", strip_control_chars, "invisible control and zero-width characters"),
    ("whitespace", normalize_whitespace, "irregular spaces (no-break, tabs, runs) and line breaks"),
]


def map_contents(records: list[dict], fn) -> tuple[list[dict], list[str]]:
    """Apply a text function to every message; return the new records and the sources it changed."""
    out, changed = [], []
    for record in records:
        messages = [{**m, "content": fn(m["content"])} for m in record["messages"]]
        if messages != record["messages"]:
            changed.append(record["source"])
        out.append({**record, "messages": messages})
    return out, changed


def _around_change(before: str, after: str, width: int) -> tuple[str, str]:
    """Both texts cut to WIDTH characters around their first difference, so the change is in view."""
    before, after = visible(before), visible(after)
    first = next((i for i, (a, b) in enumerate(zip(before, after)) if a != b), min(len(before), len(after)))
    start = max(0, first - width // 3)
    cut = lambda text: ("…" if start else "") + _short(text[start:], width)  # noqa: E731
    return cut(before), cut(after)


def show_step(records: list[dict], fn, n: int = 3, width: int = 90):
    """Before/after of the first N records a text step changes: the text around the first change,
    with invisible characters spelled out."""
    import pandas as pd

    rows = []
    for record in records:
        for message in record["messages"]:
            after = fn(message["content"])
            if after != message["content"]:
                before, after = _around_change(message["content"], after, width)
                rows.append({"source": record["source"], "role": message["role"], "before": before, "after": after})
                break
        if len(rows) >= n:
            break
    return pd.DataFrame(rows, columns=["source", "role", "before", "after"])


# =========================================================================== cleaning: record steps


def text_of(record: dict) -> str:
    """All of a record's text in one string (what dedup and filters look at)."""
    return "\n".join(m["content"] for m in record["messages"])


def fingerprint(record: dict) -> str:
    """Exact-duplicate key: a hash of the messages (after cleaning, so spacing differences are gone)."""
    return hashlib.sha256(json.dumps(record["messages"], ensure_ascii=False).encode()).hexdigest()


def shingles(text: str, n: int = 5) -> set[str]:
    """Overlapping character n-grams of the text, lowercased with punctuation dropped.

    Characters (not words) so that one changed word costs few shingles, and Chinese works too.
    """
    text = " ".join(re.findall(r"\w+", text.casefold()))
    return {text[i:i + n] for i in range(max(1, len(text) - n + 1))}


def jaccard(a: set, b: set) -> float:
    """Shared shingles / all shingles: 1.0 identical, 0.0 nothing in common."""
    return len(a & b) / len(a | b) if a or b else 1.0


def minhash_candidates(sets: list[set], num_perm: int = 64, bands: int = 16, seed: int = 0) -> set[tuple[int, int]]:
    """Pairs (i, j) likely to be similar, without comparing every pair: MinHash + LSH banding.

    Each set gets NUM_PERM "minimum hashes"; two sets agree on one with probability equal to their
    Jaccard similarity. Cut the signature into BANDS bands: pairs agreeing on a whole band land in
    the same bucket and become candidates (with 16 bands of 4, pairs above ~0.5 almost always do).
    This is how corpus-scale pipelines find near duplicates among millions of documents.
    """
    import numpy as np

    prime = (1 << 31) - 1
    rng = np.random.default_rng(seed)
    a = rng.integers(1, prime, num_perm, dtype=np.uint64)
    b = rng.integers(0, prime, num_perm, dtype=np.uint64)
    rows = num_perm // bands
    buckets: dict[tuple, list[int]] = {}
    for index, items in enumerate(sets):
        hashes = np.array([zlib.crc32(s.encode()) for s in items] or [0], dtype=np.uint64)
        signature = ((hashes[:, None] * a + b) % prime).min(axis=0)
        for band in range(bands):
            key = (band, signature[band * rows:(band + 1) * rows].tobytes())
            buckets.setdefault(key, []).append(index)
    pairs = set()
    for members in buckets.values():
        for x in range(len(members)):
            for y in range(x + 1, len(members)):
                pairs.add((members[x], members[y]))
    return pairs


def near_duplicates(records: list[dict], threshold: float = 0.8) -> list[tuple[int, int, float]]:
    """(kept index, duplicate index, Jaccard) for every record at least THRESHOLD similar to an
    earlier kept one. Candidates come from MinHash/LSH; each is then checked with the exact Jaccard."""
    sets = [shingles(text_of(r)) for r in records]
    candidates = sorted(minhash_candidates(sets), key=lambda p: (p[1], p[0]))
    duplicates, removed = [], set()
    for i, j in candidates:
        if i in removed or j in removed:
            continue
        score = jaccard(sets[i], sets[j])
        if score >= threshold:
            duplicates.append((i, j, score))
            removed.add(j)
    return duplicates


def format_text(messages: list[dict], tokenizer) -> str:
    """The text the model is trained on: the tokenizer's chat template, or a plain fallback for
    tokenizers without one (base models): "User: ...\\nAssistant: ..."."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False)
    return "".join(f"{m['role'].capitalize()}: {m['content']}\n" for m in messages)


def token_lengths(records: list[dict], tokenizer) -> list[int]:
    """Tokens each record takes once formatted with the chat template (what counts against max_length)."""
    if not records:
        return []
    texts = [format_text(r["messages"], tokenizer) for r in records]
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return [len(ids) for ids in encoded]


@dataclass
class Removed:
    record: dict
    step: str
    reason: str

    @property
    def source(self) -> str:
        return self.record["source"]


@dataclass(repr=False)
class CleanResult:
    records: list[dict]
    removed: list[Removed]
    report: list[dict]  # rows: step, changed, removed, why
    counts: dict  # figures for the report: pii_masked, exact_duplicates, near_duplicates, ...
    changed: dict  # step -> sources of the records it changed
    near_pairs: list  # (kept source, duplicate source, jaccard)
    lengths: list[int]  # token lengths of the kept records
    settings: dict

    @property
    def duplicates_removed(self) -> int:
        return self.counts["exact_duplicates"] + self.counts["near_duplicates"]

    def __repr__(self) -> str:
        return (f"<CleanResult {self.counts['records_in']} records in, {self.counts['records_out']} out; "
                f"removed {self.counts['removed']}, of which duplicates {self.duplicates_removed}>")

    def removed_by(self, step: str) -> list[Removed]:
        return [r for r in self.removed if r.step == step]

    def summary(self) -> dict:
        return {"settings": self.settings, "counts": self.counts, "report": self.report,
                "removed": [{"source": r.source, "step": r.step, "reason": r.reason} for r in self.removed]}


def _empty(kept: list[dict]) -> dict[int, str]:
    drop = {}
    for i, record in enumerate(kept):
        for m in record["messages"]:
            if m["role"] != "system" and not m["content"].strip():
                drop[i] = "empty: " + ("no text at all" if not text_of(record).strip() else f"empty {m['role']} message")
                break
    return drop


def _filtered(kept: list[dict], filters) -> dict[int, str]:
    drop = {}
    for i, record in enumerate(kept):
        for pattern, why, *role in filters or []:
            if any(re.search(pattern, m["content"]) for m in record["messages"] if not role or m["role"] == role[0]):
                drop[i] = f"matches filter {pattern!r}: {why}"
                break
    return drop


def _length_outliers(lengths: list[int], zscore: float) -> dict[int, str]:
    mean = sum(lengths) / len(lengths)
    std = math.sqrt(sum((n - mean) ** 2 for n in lengths) / len(lengths))
    return {i: f"length outlier: {n} tokens, z = {(n - mean) / std:+.1f} (mean {mean:.0f}, std {std:.0f})"
            for i, n in enumerate(lengths) if std and abs(n - mean) / std > zscore}


def _exact_duplicates(kept: list[dict]) -> dict[int, str]:
    seen, drop = {}, {}
    for i, record in enumerate(kept):
        key = fingerprint(record)
        if key in seen:
            drop[i] = f"exact duplicate of {seen[key]}"
        else:
            seen[key] = record["source"]
    return drop


def _in_holdout(kept: list[dict], holdout: list[dict], threshold: float) -> dict[int, str]:
    held = [(h["source"], shingles(_user_text(h))) for h in holdout]
    drop = {}
    for i, record in enumerate(kept):
        mine = shingles(_user_text(record))
        where = next((w for w, theirs in held if jaccard(mine, theirs) >= threshold), None)
        if where:
            drop[i] = f"its question is in the held-out set ({where})"
    return drop


def _mask_pii(kept: list[dict]) -> tuple[list[dict], list[str], Counter]:
    found = Counter()

    def masked(text):
        text, seen = count_pii(text)
        found.update(seen)
        return text

    kept, changed = map_contents(kept, masked)
    return kept, changed, found


def clean(records: list[dict], tokenizer=None, max_tokens: int | None = 512, near_dup_threshold: float | None = 0.8,
          zscore: float | None = 3.0, filters=DEFAULT_FILTERS, holdout: list[dict] | None = None) -> CleanResult:
    """Run every cleaning step in order; each step says what it changed or set aside, and why.

    Text steps first (so "the same text, spelled differently" becomes identical), then empty
    records, regex filters and PII masking; then lengths in tokens of TOKENIZER (|z-score| > ZSCORE,
    then over MAX_TOKENS); then exact and near duplicates; then overlap with held-out evaluation
    questions (HOLDOUT). ``None`` switches a step off. The input list is not modified.
    """
    report, removed, changed, counts = [], [], {}, Counter()
    kept, lengths = list(records), []

    def row(step, n_changed, n_removed, why):
        report.append({"step": step, "changed": n_changed, "removed": n_removed, "why": why})

    def set_aside(step, drop: dict[int, str], why: str):
        nonlocal kept, lengths
        removed.extend(Removed(kept[i], step, reason) for i, reason in sorted(drop.items()))
        kept = [r for i, r in enumerate(kept) if i not in drop]
        lengths = [n for i, n in enumerate(lengths) if i not in drop]  # stays aligned with `kept`
        counts[step] = len(drop)
        row(step, 0, len(drop), why)

    for step, fn, why in TEXT_STEPS:
        kept, changed[step] = map_contents(kept, fn)
        row(step, len(changed[step]), 0, why)
    set_aside("empty", _empty(kept), "a question or answer with no text teaches nothing")
    set_aside("regex_filter", _filtered(kept, filters),
              "patterns you do not want the model to learn (placeholders, boilerplate)")
    kept, changed["pii"], pii = _mask_pii(kept)
    counts.update(emails_masked=pii["email"], phones_masked=pii["phone"], pii_masked=sum(pii.values()))
    row("pii", len(changed["pii"]), 0, f"{pii['email']} e-mail addresses -> [EMAIL], {pii['phone']} phone numbers -> [PHONE]")

    lengths = token_lengths(kept, tokenizer) if tokenizer is not None else []
    if tokenizer is not None and zscore is not None and len(lengths) > 2:
        set_aside("zscore", _length_outliers(lengths, zscore),
                  f"|z-score of the length| > {zscore}: far from the rest (look before you trust it)")
    if tokenizer is not None and max_tokens is not None:
        set_aside("too_long", {i: f"too long: {n} tokens > max {max_tokens}" for i, n in enumerate(lengths)
                               if n > max_tokens}, f"over {max_tokens} tokens: truncating would cut the answer off")
    set_aside("exact_dedup", _exact_duplicates(kept),
              "the same example twice counts double in the loss (hash of the messages)")
    near_pairs = []
    if near_dup_threshold is not None:
        pairs = near_duplicates(kept, near_dup_threshold)
        near_pairs = [(kept[i]["source"], kept[j]["source"], round(s, 3)) for i, j, s in pairs]
        set_aside("near_dedup", {j: f"near duplicate of {kept[i]['source']} (Jaccard {s:.2f})" for i, j, s in pairs},
                  f"almost the same text (character 5-gram Jaccard >= {near_dup_threshold})")
    if holdout:
        set_aside("holdout_overlap", _in_holdout(kept, holdout, near_dup_threshold or 0.8),
                  "an evaluation question seen in training makes the score a lie")

    counts.update(records_in=len(records), records_out=len(kept), removed=len(removed),
                  exact_duplicates=counts.get("exact_dedup", 0), near_duplicates=counts.get("near_dedup", 0))
    counts["duplicates_removed"] = counts["exact_duplicates"] + counts["near_duplicates"]
    for step in ("unicode", "html", "control_chars", "whitespace"):
        counts[f"{step}_changed"] = len(changed[step])
    settings = {"max_tokens": max_tokens, "near_dup_threshold": near_dup_threshold, "zscore": zscore,
                "tokenizer": getattr(tokenizer, "name_or_path", None)}
    return CleanResult(kept, removed, report, dict(counts), changed, near_pairs, lengths, settings)


def _user_text(record: dict) -> str:
    return "\n".join(m["content"] for m in record["messages"] if m["role"] == "user")


def report_table(result: CleanResult):
    """The cleaning report: one row per step, what it changed or set aside, and why."""
    import pandas as pd

    table = pd.DataFrame(result.report, columns=["step", "changed", "removed", "why"])
    total = {"step": "total", "changed": "", "removed": len(result.removed),
             "why": f"{result.counts['records_in']} records in, {result.counts['records_out']} out"}
    return pd.concat([table, pd.DataFrame([total])], ignore_index=True)


def removed_table(result: CleanResult, step: str | None = None, width: int = 70):
    import pandas as pd

    rows = [{"source": r.source, "step": r.step, "reason": r.reason,
             "text": _short(text_of(r.record).replace("\n", "⏎"), width)}
            for r in result.removed if step is None or r.step == step]
    return pd.DataFrame(rows, columns=["source", "step", "reason", "text"])


def length_histogram(before: list[dict], after: list[dict], tokenizer, max_tokens: int | None = None):
    """Token lengths before and after cleaning on one log-scaled axis, with the max-length line."""
    import matplotlib.pyplot as plt
    import numpy as np

    first, second = token_lengths(before, tokenizer), token_lengths(after, tokenizer)
    top = max(first + second + [max_tokens or 1, 2])
    bins = np.geomspace(max(1, min(first + second + [top]) * 0.9), top * 1.1, 40)
    fig, ax = plt.subplots(figsize=(8, 3.4))
    ax.hist(first, bins=bins, alpha=0.5, label=f"before ({len(first)} records)", color="tab:red")
    ax.hist(second, bins=bins, alpha=0.6, label=f"after ({len(second)} records)", color="tab:green")
    if max_tokens:
        ax.axvline(max_tokens, color="black", linestyle="--", label=f"max {max_tokens} tokens")
    ax.set_xscale("log")
    ax.set_xlabel("tokens per example (chat template included, log scale)")
    ax.set_ylabel("examples")
    ax.legend()
    fig.tight_layout()
    plt.close(fig)  # the notebook displays the returned figure once
    return fig


# =========================================================================== the messy file's manifest

# How each category of the messy export's manifest (data_samples/raw/messy_export.MANIFEST.json)
# is caught: by the loader (bad records), by a text step that changed the record, by a step that set
# it aside, or (for things that are not problems) by loading it correctly and keeping it.
CATCHERS = {
    "malformed_json": "load: malformed JSON", "schema_errors": "load: schema check",
    "html": "html step", "markdown": "html step", "control_chars": "control_chars step",
    "unicode": "unicode step", "whitespace": "whitespace step", "emails": "pii step", "phones": "pii step",
    "empty": "empty step", "over_long": "zscore / too_long", "exact_duplicates": "exact / near dedup",
    "near_duplicates": "exact / near dedup", "extra_fields": "load: fields not kept",
    "chat_format": "load: chat format", "multi_turn": "load: chat format (kept)",
    "off_topic": "kept (not a defect; see Try it)",
}


def manifest_categories(manifest: dict) -> dict[str, list]:
    """Category -> planted line numbers (duplicates: [first, copy] pairs), as the manifest lists them."""
    return {k: v for k, v in manifest.items() if k in CATCHERS and isinstance(v, list)}


def manifest_check(manifest: dict, load: LoadResult, cleaned: CleanResult):
    """Planted vs caught for every category of the manifest: (table, {category: missed line numbers})."""
    import pandas as pd

    file = manifest.get("file", "messy_export.jsonl")
    where = lambda n: f"{file}:{n}"  # noqa: E731
    bad = {kind: {b.where for b in load.bad if b.kind == kind} for kind in ("malformed_json", "schema")}
    steps = {r.source: r for r in cleaned.removed}
    kept = {r["source"]: r for r in cleaned.records}
    loaded = {r["source"]: r for r in load.records}

    def is_caught(category, item) -> bool:
        if category in ("exact_duplicates", "near_duplicates"):
            first, copy = item
            gone = steps.get(where(copy))
            return bool(gone) and gone.step in ("exact_dedup", "near_dedup") and gone.reason.split(" (")[0].endswith(where(first))
        src = where(item)
        if category == "malformed_json":
            return src in bad["malformed_json"]
        if category == "schema_errors":
            return src in bad["schema"]
        step = {"html": "html", "markdown": "html", "control_chars": "control_chars", "unicode": "unicode",
                "whitespace": "whitespace", "emails": "pii", "phones": "pii"}.get(category)
        if step:
            return src in cleaned.changed.get(step, [])
        if category == "empty":
            return src in steps and steps[src].step == "empty"
        if category == "over_long":
            return src in steps and steps[src].step in ("zscore", "too_long")
        if category == "extra_fields":
            return src in load.extra_field_sources
        if category in ("chat_format", "multi_turn"):
            return src in loaded  # loaded (not a bad record) and in the one chat shape
        if category == "off_topic":
            return src in kept
        return False

    rows, misses = [], {}
    for category, items in manifest_categories(manifest).items():
        missed = [item for item in items if not is_caught(category, item)]
        misses[category] = [item[1] if isinstance(item, list) else item for item in missed]
        rows.append({"category": category, "planted": len(items), "caught": len(items) - len(missed),
                     "how": CATCHERS[category], "missed lines": ", ".join(map(str, misses[category]))})
    return pd.DataFrame(rows, columns=["category", "planted", "caught", "how", "missed lines"]), misses


def by_source(records: list[dict]) -> dict[str, dict]:
    return {r["source"]: r for r in records}


def before_after(load: LoadResult, cleaned: CleanResult, file: str) -> dict:
    """What happened to one file's records: read, bad, loaded, removed per step, changed per step, kept."""
    mine = lambda source: source.rsplit(":", 1)[0] == file  # noqa: E731
    removed = Counter(r.step for r in cleaned.removed if mine(r.source))
    return {
        "records_read": sum(mine(r["source"]) for r in load.records) + sum(b.file == file for b in load.bad),
        "bad_records": sum(b.file == file for b in load.bad),
        "loaded": sum(mine(r["source"]) for r in load.records),
        "removed": dict(removed), "removed_total": sum(removed.values()),
        "changed": {step: sum(mine(s) for s in sources) for step, sources in cleaned.changed.items()},
        "kept": sum(mine(r["source"]) for r in cleaned.records),
    }


def text_stats(records: list[dict], tokenizer) -> dict:
    """Characters, words and tokens of the messages' text (no chat template), and their ratios."""
    texts = [m["content"] for r in records for m in r["messages"]]
    tokens = sum(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]) if texts else 0
    chars, words = sum(len(t) for t in texts), sum(len(t.split()) for t in texts)
    return {"records": len(records), "characters": chars, "words": words, "tokens": tokens,
            "tokens_per_char": round(tokens / max(chars, 1), 3), "words_per_token": round(words / max(tokens, 1), 3)}


def template_overhead(tokenizer) -> int:
    """Tokens the chat template adds around one empty question and answer (system prompt included)."""
    return token_lengths([{"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": ""}],
                           "source": "-"}], tokenizer)[0]


# =========================================================================== augmentation (optional)

# Word-level synonyms for questions; answers are left alone so the facts and the persona's voice stay.
SYNONYMS = {
    "best": ["ideal", "right"], "often": ["frequently"], "grow": ["raise", "cultivate"], "help": ["assist"],
    "start": ["begin"], "quickly": ["fast"], "big": ["large"], "small": ["little"], "tips": ["advice"],
    "bugs": ["insects"], "plants": ["greens"], "need": ["require"], "good": ["decent", "nice"],
    "soil": ["earth", "dirt"], "dying": ["wilting"], "fix": ["solve"], "easy": ["simple"], "garden": ["yard"], "way": ["method"], "stop": ["prevent"],
}
TEMPLATES = [
    ("When should I plant {crop} outside?",
     "Plant {crop} outside once your last frost has passed and the soil has warmed. Harden seedlings off "
     "for about a week first so they get used to sun and wind. Happy growing!"),
    ("How much sun do {crop} need?",
     "Most {crop} do best with six or more hours of direct sun a day. If your spot is shadier, choose a "
     "compact or shade-tolerant variety and expect a smaller harvest. Happy growing!"),
    ("Can I grow {crop} in a container on my {place}?",
     "Yes! Pick a pot with drainage holes, use fresh potting mix rather than garden soil, and water more "
     "often than you would in the ground: containers dry out fast on a {place}. Happy growing!"),
]
SLOTS = {"crop": ["tomatoes", "peppers", "strawberries", "lettuce", "beans", "herbs"],
         "place": ["balcony", "patio", "windowsill", "terrace"]}


def _with_user(record: dict, fn, tag: str) -> dict:
    messages = [{**m, "content": fn(m["content"])} if m["role"] == "user" else m for m in record["messages"]]
    return {"messages": messages, "source": f"{record['source']}+{tag}"}


def synonym_replace(record: dict, rate: float = 0.5, seed: int = 0, synonyms=SYNONYMS) -> dict:
    """A copy whose question has some words swapped for synonyms (the answer is untouched)."""
    rng = random.Random(f"{seed}:{record['source']}")

    def swap(text):
        def one(match):
            word = match.group(0)
            options = synonyms.get(word.lower())
            if not options or rng.random() > rate:
                return word
            new = rng.choice(options)
            return new.capitalize() if word[0].isupper() else new
        return re.sub(r"[A-Za-z]+", one, text)

    return _with_user(record, swap, "synonyms")


def add_noise(record: dict, rate: float = 0.1, seed: int = 0) -> dict:
    """A copy whose question has light typos (swapped letters, a dropped letter, no capital, no '?')
    so the model copes with how people really type. The answer is never noised."""
    rng = random.Random(f"{seed}:{record['source']}:noise")

    def noise(text):
        words = text.split(" ")
        for i, word in enumerate(words):
            if len(word) > 3 and word.isalpha() and rng.random() < rate * 3:
                k = rng.randrange(len(word) - 1)
                words[i] = word[:k] + word[k + 1] + word[k] + word[k + 2:] if rng.random() < 0.5 else word[:k] + word[k + 1:]
        text = " ".join(words)
        text = text[:1].lower() + text[1:] if rng.random() < 0.5 else text
        return text.rstrip("?") if rng.random() < 0.5 else text

    return _with_user(record, noise, "noise")


def fill_templates(templates=TEMPLATES, slots=SLOTS, n: int = 12, seed: int = 0) -> list[dict]:
    """N new examples made by filling question/answer templates with slot values."""
    rng = random.Random(seed)
    out, seen = [], set()
    combos = [(t, dict(zip(slots, values))) for t in templates for values in itertools.product(*slots.values())]
    rng.shuffle(combos)
    for (question, answer), values in combos:
        q = question.format(**values)
        if q in seen:
            continue
        seen.add(q)
        out.append({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": answer.format(**values)}],
                    "source": f"template:{len(out) + 1}"})
        if len(out) >= n:
            break
    return out


def augment(records: list[dict], synonyms: bool = True, noise: bool = True, templates: int = 0,
            share: float = 0.3, seed: int = 0) -> list[dict]:
    """Extra examples: synonym and noise copies of a SHARE of the records, plus TEMPLATES filled ones.

    Returns only the new records (add them to the training split, not before splitting: a copy in
    validation of an example in train makes the validation loss look better than it is).
    """
    rng = random.Random(seed)
    chosen = rng.sample(records, k=min(len(records), round(len(records) * share)))
    extra = []
    for record in chosen:
        if synonyms:
            copy = synonym_replace(record, seed=seed)
            if copy["messages"] != record["messages"]:
                extra.append(copy)
        if noise:
            extra.append(add_noise(record, seed=seed))
    return extra + (fill_templates(n=templates, seed=seed) if templates else [])


# =========================================================================== split and save


def split(records: list[dict], validation_share: float = 0.1, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Shuffle with SEED and cut off VALIDATION_SHARE for validation; same seed, same split.

    Records derived from one original (augmented copies, "x.jsonl:12+noise") stay on the same side,
    so validation never holds a near copy of a training example.
    """
    if not 0 <= validation_share < 1:
        raise ValueError(f"validation_share must be in [0, 1), not {validation_share}")
    groups: dict[str, list[dict]] = {}
    for record in records:
        groups.setdefault(record["source"].split("+", 1)[0], []).append(record)
    keys = sorted(groups)
    random.Random(seed).shuffle(keys)
    n_val = round(len(keys) * validation_share)
    if validation_share > 0 and len(keys) >= 2:
        n_val = max(1, n_val)
    val_keys = set(keys[:n_val])
    train = [r for r in records if r["source"].split("+", 1)[0] not in val_keys]
    validation = [r for r in records if r["source"].split("+", 1)[0] in val_keys]
    rng = random.Random(seed + 1)
    rng.shuffle(train)
    return train, validation


def _jsonl(records: list[dict]) -> str:
    return "".join(json.dumps({"messages": r["messages"], "source": r["source"]}, ensure_ascii=False) + "\n"
                   for r in records)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)  # a reader sees the old file or the new one, never half of one


SPLIT_FILES = ("train.jsonl", "validation.jsonl", "report.json")


def save_split(train: list[dict], validation: list[dict], folder, report: dict | None = None) -> Path:
    """Write FOLDER/train.jsonl, validation.jsonl and report.json, without ever losing earlier files.

    Each file is written to a temporary name and renamed into place (atomic). If the folder already
    holds a different dataset (another run's settings, or files you made yourself), those files are
    first moved to FOLDER/backup-<time>/ and a sentence says so: re-running with new settings is the
    normal thing to do in this notebook, so refusing would only get in the way, and a backup loses
    nothing. Saving the very same dataset again writes nothing new.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    texts = {"train.jsonl": _jsonl(train), "validation.jsonl": _jsonl(validation)}
    digest = hashlib.sha256((texts["train.jsonl"] + "\0" + texts["validation.jsonl"]).encode()).hexdigest()[:16]
    meta = {"dataset": digest, "train_examples": len(train), "validation_examples": len(validation),
            "created": time.strftime("%Y-%m-%d %H:%M:%S"), **(report or {})}
    texts["report.json"] = json.dumps(meta, indent=2, ensure_ascii=False, default=str)
    existing = [folder / name for name in SPLIT_FILES if (folder / name).exists()]
    if existing:
        same = all((folder / n).exists() and (folder / n).read_text(encoding="utf-8") == texts[n]
                   for n in ("train.jsonl", "validation.jsonl"))
        if same:
            _atomic_write(folder / "report.json", texts["report.json"])
            print(f"{folder} already holds this dataset ({len(train)} train / {len(validation)} validation): kept.")
            return folder
        backup = folder / f"backup-{time.strftime('%Y%m%d-%H%M%S')}"
        suffix = 1
        while backup.exists():
            backup = folder / f"backup-{time.strftime('%Y%m%d-%H%M%S')}-{suffix}"
            suffix += 1
        backup.mkdir()
        for path in existing:
            os.replace(path, backup / path.name)
        print(f"{folder} held another dataset: moved {', '.join(p.name for p in existing)} to {backup.name}/.")
    for name in SPLIT_FILES:  # report.json last: its presence says the other two are complete
        _atomic_write(folder / name, texts[name])
    return folder


def write_jsonl(path, records: list[dict]) -> Path:
    """RECORDS as one JSON object per line, written atomically (PATH never holds half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return path


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def load_split(folder):
    """The saved split as a ``datasets.DatasetDict`` (train / validation), column ``messages`` (+ ``source``)."""
    from datasets import Dataset, DatasetDict

    folder = Path(folder)
    parts = {}
    for split_name in ("train", "validation"):
        path = folder / f"{split_name}.jsonl"
        if not path.exists():
            raise FileNotFoundError(f"{path}: no saved split here; run notebook 01 or data.ensure_dataset(run_dir)")
        rows = read_jsonl(path)
        parts[split_name] = Dataset.from_list(rows) if rows else Dataset.from_dict({"messages": [], "source": []})
    return DatasetDict(parts)


def to_dataset(records: list[dict]):
    from datasets import Dataset

    return Dataset.from_list([{"messages": r["messages"], "source": r["source"]} for r in records])


# =========================================================================== the default pipeline


def default_files() -> list[Path]:
    """What the course trains on by default: the persona set plus the cleaned messy export."""
    return [data_samples("persona", "train.jsonl"), data_samples("raw", "messy_export.jsonl")]


def holdout_records() -> list[dict]:
    """The held-out evaluation questions (never trained on), from the persona and general eval sets."""
    out = []
    for parts in (("persona", "eval.jsonl"), ("general", "eval.jsonl")):
        try:
            path = data_samples(*parts)
        except FileNotFoundError:
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").split("\n"), start=1):
            try:
                obj = json.loads(line) if line.strip() else {}
            except json.JSONDecodeError:
                continue
            question = obj.get("question") or obj.get("instruction")
            if isinstance(question, str):
                out.append({"messages": [{"role": "user", "content": question}], "source": f"{path.name}:{number}"})
    return out


def build(run_dir_data, tokenizer, files=None, max_tokens: int = 512, near_dup_threshold: float = 0.8,
          zscore: float | None = 3.0, validation_share: float = 0.1, seed: int = 0, extra: list[dict] | None = None):
    """The whole stage in one call: load FILES, clean, split, save. Returns (load, clean, train, validation)."""
    loaded = load_all(*(files or default_files()))
    cleaned = clean(loaded.records, tokenizer, max_tokens=max_tokens, near_dup_threshold=near_dup_threshold,
                    zscore=zscore, holdout=holdout_records())
    train, validation = split(cleaned.records, validation_share=validation_share, seed=seed)
    train = train + (extra or [])
    report = {"files": loaded.files, "raw_records": loaded.raw_records, "bad_records": len(loaded.bad),
              "bad": [str(b) for b in loaded.bad], "seed": seed, "validation_share": validation_share,
              **cleaned.summary()}
    save_split(train, validation, run_dir_data, report=report)
    return loaded, cleaned, train, validation


def ensure_dataset(run_dir=None, tokenizer=None) -> Path:
    """RUN_DIR/data with a cleaned split; built with the default settings if it is not there yet."""
    from course_lib import paths

    folder = paths.run_dir(run_dir) / "data"
    if (folder / "train.jsonl").exists() and (folder / "validation.jsonl").exists():
        return folder
    print(f"No cleaned dataset in {folder}: building it from data_samples with the default settings (~5 s).")
    if tokenizer is None:
        from course_lib.models import load_tokenizer

        tokenizer = load_tokenizer()
    build(folder, tokenizer, **{k: v for k, v in DEFAULTS.items()})
    return folder


# =========================================================================== interactive report


def cleaning_panel(records: list[dict], tokenizer, max_tokens: int = 512, near_dup_threshold: float = 0.8,
                   zscore: float | None = 3.0, holdout=None):
    """Sliders for max length and near-duplicate threshold that re-run the cleaning report.

    Headless (papermill) it runs once with the given values and returns the CleanResult.
    """
    import ipywidgets as widgets
    from IPython.display import display

    from course_lib.ui import panel

    controls = {
        "max_tokens": widgets.IntSlider(value=max_tokens, min=64, max=1024, step=32, description="max tokens",
                                        continuous_update=False),
        "near_dup_threshold": widgets.FloatSlider(value=near_dup_threshold, min=0.5, max=1.0, step=0.05,
                                                  description="near-dup ≥", continuous_update=False),
    }

    def run(max_tokens, near_dup_threshold):
        result = clean(records, tokenizer, max_tokens=max_tokens, near_dup_threshold=near_dup_threshold,
                       zscore=zscore, holdout=holdout)
        display(report_table(result))
        print(f"max tokens {max_tokens}, near-duplicate threshold {near_dup_threshold:.2f}: "
              f"kept {len(result.records)} of {len(records)}; duplicates removed {result.duplicates_removed}, "
              f"too long {result.counts.get('too_long', 0)}")
        return result

    return panel(run, controls, button=None, live=True)
