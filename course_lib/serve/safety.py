"""The safety filter the deployment stage runs on every request: input check, output check.

A deliberately small, dependency-free, rule-based filter (it runs per request, in microseconds):

* **blocked terms**, matched on a *normalised* copy of the text, so that ``B0MB``, ``b.o.m.b``,
  ``ｒｉｃｉｎ`` (full-width) or ``rісin`` (with a Cyrillic ``і``) are caught, while whole-word
  matching keeps harmless look-alikes such as *Ricinus communis* (the castor bean's Latin name,
  which contains "ricin") or a *bomb-proof raised bed* allowed;
* **named regex patterns** (prompt injection, system-prompt extraction, chat-template tokens),
  each applied to the input, the output or both;
* **output checks**: blocked terms in what the model says, PII (e-mail addresses, phone numbers)
  and leaking the system prompt.

Why hand-written: the well-kept alternatives are model-based moderators (Llama Guard, a toxicity
classifier) that need weights we cannot download offline and cost a forward pass per request.
Rules are the first line a deployment always has; what they cannot catch (paraphrased intent,
other languages) is measured in the A5 notebook and said plainly there.

Normalisation, in this order (``normalise`` below; each step can be switched off in the config's
``"normalise"`` section, which the A5 notebook does to show what each step buys):

1. ``nfkc``: Unicode NFKC (full-width letters, ligatures, superscripts -> plain letters), then
   case-folding, removing zero-width characters and soft hyphens, and stripping accents.
2. ``homoglyphs``: Cyrillic and Greek letters that look like Latin ones -> the Latin letter.
3. ``separators``: a run of three or more single characters split by separators
   (``b.o.m.b``, ``r i c i n``, ``n-a-p-a-l-m``) is joined into one word.
4. ``leetspeak``: inside a word that has at least one letter, ``0->o 1->i 3->e 4->a 5->s 7->t
   @->a $->s !->i`` (plain numbers such as ``10`` or ``2026`` are left alone). ``1`` is also tried
   as ``l``.

A blocked term matches as whole words (``word_boundaries``), and the gaps between a term's words
match any run of non-letters, so ``pipe bomb`` also catches ``pipe-bomb`` and ``pipebomb``. A term
followed by a hyphen and a letter is the start of a compound word and does not match: "build a
bomb-proof bed" is allowed (the price: "pipe bomb-making" is not caught by the term "pipe bomb").
A plural ``s``/``es`` after a term still matches.
"""

from __future__ import annotations

import json
import os
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from course_lib import paths
from course_lib.ui import panel as make_panel

WHERE = ("input", "output")
NORMALISE_STEPS = ("nfkc", "homoglyphs", "separators", "leetspeak")

_INVISIBLE = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff\u00ad\u180e"), None)
# Cyrillic / Greek letters (lower case: we map after case-folding) that pass for Latin ones.
_HOMOGLYPHS = str.maketrans({
    "а": "a", "в": "b", "е": "e", "ё": "e", "з": "3", "і": "i", "ї": "i", "ј": "j", "к": "k",
    "м": "m", "н": "h", "о": "o", "р": "p", "с": "c", "т": "t", "у": "y", "х": "x", "ѕ": "s",
    "ԁ": "d", "ɡ": "g", "α": "a", "β": "b", "ε": "e", "η": "n", "ι": "i", "κ": "k", "ν": "v",
    "ο": "o", "ρ": "p", "τ": "t", "υ": "u", "χ": "x",
})
_LEET_I = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t",
                         "@": "a", "$": "s", "!": "i", "|": "l"})
_LEET_L = str.maketrans({"0": "o", "1": "l", "3": "e", "4": "a", "5": "s", "7": "t",
                         "@": "a", "$": "s", "!": "i", "|": "l"})
# Three or more single characters with separators between them: "b.o.m.b", "r i c i n".
_CHAR = r"(?:[^\W_]|[@$!|])"
_SPACED = re.compile(rf"(?<![^\W_@$!|]){_CHAR}(?:[\s.\-_*·•/\\,+~'\"]+{_CHAR}(?![^\W_@$!|])){{2,}}")
_SEPARATOR = re.compile(r"[\s.\-_*·•/\\,+~'\"]+")

EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)*\.[a-z]{2,}", re.IGNORECASE)
# Candidate phone numbers; a match counts only with at least 9 digits, so that "1000-1500 ppm",
# "10-10-10 fertiliser" or "2026-11-22" are not phone numbers.
PHONE = re.compile(r"(?<![\w])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{1,4}\)[\s.-]?)?\d{2,4}(?:[\s.-]?\d{2,4}){2,4}(?![\w])")
PHONE_MIN_DIGITS = 9


class SafetyConfigError(ValueError):
    """A filter config that cannot be used; the message names the file and the field."""


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    rule: str = ""  # which rule fired ("" when allowed), e.g. "blocked_term:ricin", "pattern:prompt_injection"


def normalise(text: str, steps=NORMALISE_STEPS) -> list[str]:
    """The forms of ``text`` that blocked terms are matched against (one, or two with leetspeak)."""
    if "nfkc" in steps:
        text = unicodedata.normalize("NFKC", text).casefold().translate(_INVISIBLE)
        text = "".join(c for c in unicodedata.normalize("NFD", text) if not unicodedata.combining(c))
        text = unicodedata.normalize("NFC", text)
    else:
        text = text.lower()
    if "homoglyphs" in steps:
        text = text.translate(_HOMOGLYPHS)
    if "separators" in steps:
        text = _SPACED.sub(_join_spaced, text)
    if "leetspeak" not in steps:
        return [text]
    forms = []
    for table in (_LEET_I, _LEET_L):
        # Only words holding a letter: "10 tomatoes" stays "10 tomatoes", "b0mb" becomes "bomb".
        form = re.sub(r"[\w@$!|]+", lambda m, table=table: m.group(0).translate(table)
                      if re.search(r"[^\W\d_]", m.group(0)) else m.group(0), text)
        if form not in forms:
            forms.append(form)
    return forms


def _join_spaced(match: re.Match) -> str:
    """'b.o.m.b' -> 'bomb'; a leading 'a ' or 'i ' stays a word ('make a P I P E' -> 'make a pipe')."""
    run = match.group(0)
    head = re.match(r"[ai] (?=\S[^\w]+\S[^\w]+\S)", run)
    if head:
        return head.group(0) + _SEPARATOR.sub("", run[head.end():])
    return _SEPARATOR.sub("", run)


def _term_regex(terms: list[str], whole_words: bool) -> re.Pattern | None:
    """One compiled alternation for all terms; gaps between a term's words match any non-letters."""
    if not terms:
        return None
    parts = []
    for term in sorted(terms, key=len, reverse=True):
        words = normalise(term, ("nfkc",))[0].split()
        body = r"[\W_]*".join(re.escape(w) for w in words)
        parts.append(rf"(?<![^\W_])(?P<t{len(parts)}>{body})(?:e?s)?(?![^\W_]|-[^\W_])" if whole_words
                     else rf"(?P<t{len(parts)}>{body})")
    return re.compile("|".join(parts))


@dataclass(frozen=True)
class Pattern:
    name: str
    regex: re.Pattern
    where: tuple[str, ...] = WHERE


@dataclass
class SafetyFilter:
    """Checks a request before the model sees it and the answer before the client does."""

    refusal: str
    blocked_terms: list[str] = field(default_factory=list)
    patterns: list[Pattern] = field(default_factory=list)
    normalise_steps: tuple[str, ...] = NORMALISE_STEPS
    word_boundaries: bool = True
    pii: tuple[str, ...] = ("email", "phone")
    pii_allow: tuple[str, ...] = ()
    system_prompt: str = ""
    leak_words: int = 8
    enabled: bool = True

    def __post_init__(self):
        self._terms = sorted(self.blocked_terms, key=len, reverse=True)
        self._term_re = _term_regex(self.blocked_terms, self.word_boundaries)
        words = _words(self.system_prompt)
        n = self.leak_words
        self._prompt_shingles = {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}

    # ---- building ----
    @classmethod
    def from_config(cls, config: str | os.PathLike | dict | None = None) -> SafetyFilter:
        """None -> the shipped default (data_samples/safety/filter.json); a path -> that JSON file;
        a dict -> the same schema. Bad config: SafetyConfigError naming the file and the field."""
        source = "config"
        if config is None:
            config = paths.data_samples("safety", "filter.json")
        if isinstance(config, (str, os.PathLike)):
            source = str(config)
            try:
                config = json.loads(Path(config).read_text(encoding="utf-8"))
            except FileNotFoundError:
                raise SafetyConfigError(f"{source}: no such safety filter config file") from None
            except json.JSONDecodeError as err:
                raise SafetyConfigError(f"{source}: not valid JSON (line {err.lineno}: {err.msg})") from None
        if not isinstance(config, dict):
            raise SafetyConfigError(f"{source}: the config must be a JSON object, got {type(config).__name__}")
        return cls(**_parse(config, source))

    @classmethod
    def disabled(cls) -> SafetyFilter:
        """A filter that allows everything (for comparisons, or a deployment that opts out)."""
        return cls(refusal="", pii=(), enabled=False)

    # ---- checking ----
    def check_input(self, text: str) -> Verdict:
        """Is this user message safe to send to the model?"""
        return self._check(text, "input")

    def check_output(self, text: str) -> Verdict:
        """Is this model answer safe to send to the client? (Otherwise send ``refusal``.)"""
        verdict = self._check(text, "output")
        if not verdict.allowed or not self.enabled:
            return verdict
        for kind in self.pii:
            if _find_pii(kind, text, self.pii_allow):
                return Verdict(False, f"pii:{kind}")
        if self._prompt_shingles:
            words = _words(text)
            n = self.leak_words
            if any(tuple(words[i:i + n]) in self._prompt_shingles for i in range(len(words) - n + 1)):
                return Verdict(False, "system_prompt_leak")
        return Verdict(True)

    def _check(self, text: str, where: str) -> Verdict:
        if not self.enabled:
            return Verdict(True)
        if not isinstance(text, str):
            raise TypeError(f"the safety filter checks text, got {type(text).__name__}")
        forms = normalise(text, self.normalise_steps)
        if self._term_re is not None:
            for form in forms:
                match = self._term_re.search(form)
                if match:
                    index = int(match.lastgroup[1:])
                    return Verdict(False, f"blocked_term:{self._terms[index]}")
        light = forms[0] if "leetspeak" not in self.normalise_steps else normalise(
            text, tuple(s for s in self.normalise_steps if s != "leetspeak"))[0]
        for pattern in self.patterns:
            if where in pattern.where and any(pattern.regex.search(f) for f in {light, *forms}):
                return Verdict(False, f"pattern:{pattern.name}")
        return Verdict(True)


def client_verdict(safety, blocked_by: str = "") -> dict:
    """What the filter decided about one request, as the server tells its client (notebook 05's panel).

    ``{"verdict": "off"}`` when no filter runs, ``{"verdict": "allowed"}``, or ``{"verdict": "blocked",
    "where": "input" or "output", "rule": the rule that fired}``; BLOCKED_BY is "input:<rule>" or "output:<rule>".
    """
    if safety is None or not getattr(safety, "enabled", True):
        return {"verdict": "off"}
    if not blocked_by:
        return {"verdict": "allowed"}
    where, _, rule = blocked_by.partition(":")
    return {"verdict": "blocked", "where": where, "rule": rule}


def _words(text: str) -> list[str]:
    return re.findall(r"[^\W_]+", normalise(text, ("nfkc",))[0])


def _find_pii(kind: str, text: str, allow: tuple[str, ...]) -> bool:
    if kind == "email":
        return any(m.group(0).lower() not in allow for m in EMAIL.finditer(text))
    found = (m.group(0) for m in PHONE.finditer(text))
    return any(sum(c.isdigit() for c in f) >= PHONE_MIN_DIGITS and f not in allow for f in found)


def _parse(config: dict, source: str) -> dict:
    """Validate the JSON schema (see data_samples/safety/README.md) into SafetyFilter's arguments."""
    def bad(field_name, why):
        return SafetyConfigError(f"{source}: field '{field_name}': {why}")

    known = {"refusal", "blocked_terms", "patterns", "normalise", "word_boundaries", "output", "description"}
    for key in config:
        if key not in known:
            raise bad(key, f"unknown field (expected one of {sorted(known)})")
    refusal = config.get("refusal")
    if not isinstance(refusal, str) or not refusal.strip():
        raise bad("refusal", "must be a non-empty string (the text the client gets instead)")
    terms = config.get("blocked_terms", [])
    if not isinstance(terms, list):
        raise bad("blocked_terms", "must be a list of strings")
    for i, term in enumerate(terms):
        if not isinstance(term, str) or not re.search(r"[^\W_]", term):
            raise bad(f"blocked_terms[{i}]", f"must be a string with at least one letter, got {term!r}")
    patterns = []
    for i, item in enumerate(config.get("patterns", [])):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not item["name"]:
            raise bad(f"patterns[{i}].name", "each pattern needs a non-empty 'name'")
        try:
            regex = re.compile(item.get("regex"), re.IGNORECASE)
        except (re.error, TypeError) as err:
            raise bad(f"patterns[{i}].regex", f"not a valid regular expression ({err})") from None
        where = tuple(item.get("where", WHERE))
        if not where or any(w not in WHERE for w in where):
            raise bad(f"patterns[{i}].where", f"must list some of {list(WHERE)}, got {list(where)}")
        patterns.append(Pattern(item["name"], regex, where))
    steps = config.get("normalise", list(NORMALISE_STEPS))
    if not isinstance(steps, list) or any(s not in NORMALISE_STEPS for s in steps):
        raise bad("normalise", f"must be a list of steps from {list(NORMALISE_STEPS)}, got {steps!r}")
    output = config.get("output", {})
    if not isinstance(output, dict):
        raise bad("output", "must be an object")
    pii = output.get("pii", ["email", "phone"])
    if not isinstance(pii, list) or any(p not in ("email", "phone") for p in pii):
        raise bad("output.pii", f"must list some of ['email', 'phone'], got {pii!r}")
    leak_words = output.get("leak_words", 8)
    if not isinstance(leak_words, int) or leak_words < 3:
        raise bad("output.leak_words", f"must be an integer >= 3, got {leak_words!r}")
    return dict(refusal=refusal, blocked_terms=list(terms), patterns=patterns,
                normalise_steps=tuple(steps), word_boundaries=bool(config.get("word_boundaries", True)),
                pii=tuple(pii), pii_allow=tuple(str(a).lower() for a in output.get("pii_allow", [])),
                system_prompt=str(output.get("system_prompt", "")), leak_words=leak_words)


# ---- red-teaming: run a labelled set of attacks and look-alikes through a filter ----

REDTEAM_CATEGORIES = ("injection", "must_refuse", "obfuscated", "lookalike")


def load_redteam(path: str | os.PathLike | None = None) -> list[dict]:
    """The red-team set (default data_samples/safety/redteam.jsonl); a bad line names file and line."""
    path = Path(path) if path is not None else paths.data_samples("safety", "redteam.jsonl")
    items = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as err:
            raise SafetyConfigError(f"{path}:{number}: not valid JSON ({err.msg})") from None
        for key, allowed in (("where", WHERE), ("expected", ("block", "allow")), ("category", REDTEAM_CATEGORIES)):
            if item.get(key) not in allowed:
                raise SafetyConfigError(f"{path}:{number}: field '{key}' must be one of {list(allowed)}, got {item.get(key)!r}")
        if not isinstance(item.get("text"), str) or not item["text"].strip():
            raise SafetyConfigError(f"{path}:{number}: field 'text' must be a non-empty string")
        items.append(item)
    return items


def run_redteam(safety: SafetyFilter, items: list[dict]) -> list[dict]:
    """Each item with the filter's verdict and an outcome: caught, missed, false_refusal or answered."""
    rows = []
    for item in items:
        check = safety.check_input if item["where"] == "input" else safety.check_output
        verdict = check(item["text"])
        if item["expected"] == "block":
            outcome = "missed" if verdict.allowed else "caught"
        else:
            outcome = "answered" if verdict.allowed else "false_refusal"
        rows.append({**item, "rule": verdict.rule, "outcome": outcome})
    return rows


def redteam_summary(rows: list[dict]) -> dict[str, int]:
    """Counts of each outcome (the figures the A5 notebook records)."""
    return {k: sum(r["outcome"] == k for r in rows) for k in ("caught", "missed", "false_refusal", "answered")}


def redteam_table(rows: list[dict]):
    """Caught / missed / false refusals / answered per category (a DataFrame; pandas imported lazily)."""
    import pandas as pd

    table = pd.crosstab(pd.Series([r["category"] for r in rows], name="category"),
                        pd.Series([r["outcome"] for r in rows], name="outcome"))
    table = table.reindex(columns=["caught", "missed", "false_refusal", "answered"], fill_value=0)
    table.loc["total"] = table.sum()
    return table


def redteam_failures(rows: list[dict]):
    """The misses and false refusals, with the rule that fired and the set's note (a DataFrame)."""
    import pandas as pd

    wrong = [{"outcome": r["outcome"], "category": r["category"], "where": r["where"], "text": r["text"],
              "rule": r["rule"], "note": r.get("note", "")}
             for r in rows if r["outcome"] in ("missed", "false_refusal")]
    return pd.DataFrame(wrong, columns=["outcome", "category", "where", "text", "rule", "note"])


def panel(safety: SafetyFilter, text: str, where: str = "input"):
    """Type a message, see the verdict and the normalised text the rules saw (runs once headless)."""
    import ipywidgets as w

    def run(text, where):
        check = safety.check_input if where == "input" else safety.check_output
        verdict = check(text)
        print(f"{'allowed' if verdict.allowed else 'BLOCKED by ' + verdict.rule}\n"
              f"normalised: {' | '.join(normalise(text, safety.normalise_steps))}")
        return verdict

    controls = {"text": w.Text(value=text, description="message", layout=w.Layout(width="80%")),
                "where": w.ToggleButtons(options=list(WHERE), value=where, description="check")}
    return make_panel(run, controls, button=None, live=True)
