"""Cleaning: text steps that fix how a record is written, record steps that set a record aside.

Each step says what it changed or set aside and why (``CleanResult``); ``clean`` runs them all in
order. Duplicate detection itself lives in dedup.py.
"""

from __future__ import annotations

import html
import math
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass

from course_lib.data.dedup import fingerprint, jaccard, near_duplicates, shingles, text_of
from course_lib.data.load import _short


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
