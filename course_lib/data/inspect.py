"""Looking at the data: tables of bad and removed records, the cleaning report, length histograms,
the messy export's planted-vs-caught check, before/after figures, and the interactive cleaning panel."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from course_lib import ui
from course_lib.data.clean import CleanResult, clean, token_lengths
from course_lib.data.dedup import text_of
from course_lib.data.load import LoadResult, _short


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



# =========================================================================== interactive report


def cleaning_panel(records: list[dict], tokenizer, max_tokens: int = 512, near_dup_threshold: float = 0.8,
                   zscore: float | None = 3.0, holdout=None):
    """Sliders for max length and near-duplicate threshold that re-run the cleaning report.

    Headless (papermill) it runs once with the given values and returns the CleanResult.
    """
    import ipywidgets as widgets
    from IPython.display import display

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

    return ui.panel(run, controls, button=None, live=True)
