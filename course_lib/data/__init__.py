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

Where things are:
    load.py     reading JSONL/JSON/CSV/text files and datasets rows (``from_datasets``), record validation
                (instruction, OpenAI messages, ShareGPT conversations; BadRecord, LoadResult)
    encodings.py  what a file's bytes are (BOMs, guesses) and the error that says how to read them
    clean.py    text steps (unicode, html, control chars, whitespace, PII), record steps, ``clean``
    dedup.py    exact and near duplicates (fingerprint, shingles, Jaccard, MinHash/LSH)
    augment.py  synonym/noise copies and template-filled examples
    store.py    split, atomic saves, reading a split back, the default pipeline (ensure_dataset)
    inspect.py  tables, length histogram, the messy export's manifest check, the cleaning panel
"""

from course_lib.data.augment import SLOTS, SYNONYMS, TEMPLATES, add_noise, augment, fill_templates, synonym_replace
from course_lib.data.clean import (
    ANSI,
    BLOCK_TAG,
    CJK,
    CJK_CHARS,
    CURLY,
    DEFAULT_FILTERS,
    EMAIL,
    FULL_PUNCT,
    MD_EMPHASIS,
    MD_FENCE,
    MD_HEADING,
    MD_LINK,
    PHONE,
    PII_PATTERNS,
    SCRIPT,
    TAG,
    TEXT_STEPS,
    TO_FULL_WIDTH,
    ZERO_WIDTH,
    CleanResult,
    Removed,
    clean,
    count_pii,
    format_text,
    map_contents,
    mask_pii,
    normalize_unicode,
    normalize_whitespace,
    show_step,
    strip_control_chars,
    strip_html,
    token_lengths,
    visible,
)
from course_lib.data.dedup import fingerprint, jaccard, minhash_candidates, near_duplicates, shingles, text_of
from course_lib.data.encodings import GUESSES, guess_encoding
from course_lib.data.inspect import (
    CATCHERS,
    bad_table,
    before_after,
    by_source,
    cleaning_panel,
    length_histogram,
    manifest_categories,
    manifest_check,
    raw_lines,
    removed_table,
    report_table,
    template_overhead,
    text_stats,
)
from course_lib.data.load import (
    ALIASES,
    FORMATS,
    ROLES,
    SHAREGPT_ROLES,
    TOOL_ROLES,
    BadRecord,
    LoadResult,
    NoRecordsError,
    from_datasets,
    load_all,
    load_records,
    record_from_object,
)
from course_lib.data.store import (
    DEFAULTS,
    SPLIT_FILES,
    build,
    default_files,
    ensure_dataset,
    holdout_records,
    load_split,
    read_jsonl,
    save_split,
    split,
    to_dataset,
    write_jsonl,
)
from course_lib.paths import data_samples

__all__ = [
    # load.py, encodings.py
    "ALIASES", "FORMATS", "ROLES", "SHAREGPT_ROLES", "TOOL_ROLES", "BadRecord", "LoadResult", "NoRecordsError",
    "from_datasets", "load_all", "load_records", "record_from_object", "GUESSES", "guess_encoding",
    # clean.py
    "ANSI", "BLOCK_TAG", "CJK", "CJK_CHARS", "CURLY", "DEFAULT_FILTERS", "EMAIL", "FULL_PUNCT", "MD_EMPHASIS",
    "MD_FENCE", "MD_HEADING", "MD_LINK", "PHONE", "PII_PATTERNS", "SCRIPT", "TAG", "TEXT_STEPS", "TO_FULL_WIDTH",
    "ZERO_WIDTH", "CleanResult", "Removed", "clean", "count_pii", "format_text", "map_contents", "mask_pii",
    "normalize_unicode", "normalize_whitespace", "show_step", "strip_control_chars", "strip_html", "token_lengths",
    "visible",
    # dedup.py
    "fingerprint", "jaccard", "minhash_candidates", "near_duplicates", "shingles", "text_of",
    # augment.py
    "SLOTS", "SYNONYMS", "TEMPLATES", "add_noise", "augment", "fill_templates", "synonym_replace",
    # store.py
    "DEFAULTS", "SPLIT_FILES", "build", "default_files", "ensure_dataset", "holdout_records", "load_split",
    "read_jsonl", "save_split", "split", "to_dataset", "write_jsonl",
    # inspect.py
    "CATCHERS", "bad_table", "before_after", "by_source", "cleaning_panel", "length_histogram",
    "manifest_categories", "manifest_check", "raw_lines", "removed_table", "report_table", "template_overhead",
    "text_stats",
    # course_lib.paths, for data.data_samples(...) as in the examples above
    "data_samples",
]
