"""From chat records to training batches: chat template, answer-only labels, packing.

Three ideas a learner should take away:
1. The model sees exactly the text the chat template renders, the same one it will see at
   inference, so train and serve never disagree on format.
2. Labels are -100 (ignored by the loss) everywhere except the assistant's reply and the
   end-of-turn token after it: the model learns to answer and to stop, not to predict questions.
3. Short examples are packed into one long row with ``position_ids`` restarting at 0 for each
   example and no padding. transformers turns restarting positions into a block-diagonal causal
   mask (``masking_utils.find_packed_sequence_indices``), so no example attends to its neighbour;
   and no compute is spent on padding tokens. Trap: transformers only does this when no KV cache
   exists, so the model must run with ``use_cache=False``; with the cache on, packed examples
   silently see each other. ``FlatCollator``'s batches carry ``use_cache=False`` for that reason,
   whatever the model's config says (a model trained here keeps the cache on for generation).
"""

from __future__ import annotations

from dataclasses import dataclass

from course_lib import versions

versions.warn_once()  # one sentence if transformers, peft, ... differ from the tested versions

IGNORE = -100  # the label value PyTorch's cross-entropy skips


def _render(tokenizer, messages, generation_prompt=False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def assistant_char_spans(tokenizer, messages) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of each assistant reply (with its end token).

    Rendering the conversation up to each reply tells where the reply starts and ends, whatever
    the template looks like; no template-specific markers are needed.
    """
    text = _render(tokenizer, messages)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] == "assistant":
            start = len(_render(tokenizer, messages[:i], generation_prompt=True))
            end = len(_render(tokenizer, messages[: i + 1]))
            if text[:end] != _render(tokenizer, messages[: i + 1]):
                raise ValueError("this chat template renders earlier turns differently once a reply is added; "
                                 "answer-only masking needs a prefix-stable template")
            spans.append((start, end))
    return text, spans


def encode(messages, tokenizer) -> dict:
    """One conversation -> input_ids and labels that are -100 outside the assistant's replies."""
    text, spans = assistant_char_spans(tokenizer, messages)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    labels = [
        token if any(start <= begin < end for start, end in spans) else IGNORE
        for token, (begin, _) in zip(enc["input_ids"], enc["offset_mapping"])
    ]
    return {"input_ids": enc["input_ids"], "labels": labels, "length": len(labels)}


def tokenize(dataset, tokenizer, max_length: int = 512):
    """A Dataset with a ``messages`` column -> input_ids, labels, length (longer ones set aside, said aloud)."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("this tokenizer has no chat template: set tokenizer.chat_template (ChatML works for most "
                         "base models) or use an -Instruct model")
    encoded = dataset.map(lambda ex: encode(ex["messages"], tokenizer),
                          remove_columns=dataset.column_names, desc="tokenizing")
    kept = encoded.filter(lambda ex: ex["length"] <= max_length and any(l != IGNORE for l in ex["labels"]))
    if len(kept) < len(encoded):
        print(f"Set aside {len(encoded) - len(kept)} of {len(encoded)} examples: longer than "
              f"{max_length} tokens or with no assistant reply to learn from.")
    return kept


def label_everything(tokenized):
    """The ablation of answer-only loss: every token is a label (system line and question included).

    Notebook 02 trains once with these labels to show what masking the prompt changes.
    """
    return tokenized.map(lambda ex: {"labels": list(ex["input_ids"])}, desc="labelling every token")


def pack(tokenized, max_length: int = 512):
    """Pack examples into rows of at most MAX_LENGTH tokens (first-fit, longest first).

    Each row keeps every example's tokens contiguous, with position_ids restarting at 0 per
    example; the first label of each example is -100 so no example is asked to predict its
    neighbour's first token.
    """
    from datasets import Dataset

    order = sorted(range(len(tokenized)), key=lambda i: -tokenized[i]["length"])
    rows: list[dict] = []
    for i in order:
        ex = tokenized[i]
        row = next((r for r in rows if len(r["input_ids"]) + ex["length"] <= max_length), None)
        if row is None:
            row = {"input_ids": [], "labels": [], "position_ids": []}
            rows.append(row)
        row["input_ids"] += ex["input_ids"]
        row["labels"] += [IGNORE] + ex["labels"][1:]
        row["position_ids"] += list(range(ex["length"]))
    for row in rows:
        row["length"] = len(row["input_ids"])
    return Dataset.from_list(rows)


def packing_stats(tokenized, packed, max_length: int = 512) -> dict:
    """How much padding packing saves, compared with padding every example to MAX_LENGTH."""
    tokens = sum(tokenized["length"])
    return {
        "examples": len(tokenized),
        "rows_packed": len(packed),
        "tokens": tokens,
        "trained_tokens": sum(sum(l != IGNORE for l in labels) for labels in tokenized["labels"]),
        "padding_share_if_padded_to_max": round(1 - tokens / (len(tokenized) * max_length), 3),
        "fill_of_packed_rows": round(tokens / (len(packed) * max_length), 3),
    }


@dataclass
class FlatCollator:
    """Concatenate a batch of rows into one padding-free row, keeping each row's position_ids.

    transformers' DataCollatorWithFlattening does this for one example per row, but it restarts
    position_ids at every row, which would merge the examples inside an already packed row;
    this keeps them, so both packed rows and single examples stay separate.

    ``trained_logits_only`` avoids wasted work: with answer-only labels most positions (system
    prompt, question) have no target, yet the output layer would still turn each into a
    vocabulary-sized row of logits (for SmolLM2: 49,152 x 576, a fifth of the model's FLOPs, and
    the biggest tensor of the step). The batch then also carries ``logits_to_keep``, a mask of the
    positions whose next token is trained on (transformers projects only those), and
    ``shift_labels``, their targets in order (the loss uses them as they are). The loss is the
    same; the logits returned hold only the kept positions. Off for prompt tuning, whose virtual
    tokens lengthen the sequence the model sees.
    """

    trained_logits_only: bool = True

    def __call__(self, features):
        import torch

        batch = {"input_ids": [], "labels": [], "position_ids": []}
        for f in features:
            batch["input_ids"] += list(f["input_ids"])
            batch["labels"] += [IGNORE] + list(f["labels"])[1:]
            batch["position_ids"] += list(f.get("position_ids") or range(len(f["input_ids"])))
        out = {k: torch.tensor([v], dtype=torch.long) for k, v in batch.items()}
        out["use_cache"] = False  # with a KV cache transformers ignores the packing (see the module docstring)
        if self.trained_logits_only:
            targets = batch["labels"][1:] + [IGNORE]  # position t predicts token t + 1
            out["logits_to_keep"] = torch.tensor([[t != IGNORE for t in targets]])
            out["shift_labels"] = torch.tensor([t for t in targets if t != IGNORE], dtype=torch.long)
        return out


def collator(tokenizer=None, trained_logits_only: bool = True) -> FlatCollator:
    """The padding-free collator the course trains with (TOKENIZER kept for a uniform signature)."""
    return FlatCollator(trained_logits_only)


class Masked:
    """A rendering of one example: trained-on tokens highlighted (HTML in Jupyter, [[...]] in text)."""

    def __init__(self, pieces):
        self.pieces = pieces  # (text, trained)

    def __str__(self):
        return "".join(f"[[{t}]]" if trained else t for t, trained in self.pieces)

    def _repr_html_(self):
        import html

        style = "background:#c8f7c5;border-bottom:2px solid #2e7d32"
        body = "".join(f'<span style="{style}">{html.escape(t)}</span>' if trained else
                       f'<span style="color:#888">{html.escape(t)}</span>' for t, trained in self.pieces)
        return f'<pre style="white-space:pre-wrap">{body}</pre><small>green: tokens the loss counts</small>'


def show_masking(example, tokenizer) -> Masked:
    """Show which tokens of an encoded example the loss is computed on."""
    pieces: list[tuple[str, bool]] = []
    for token, label in zip(example["input_ids"], example["labels"]):
        text, trained = tokenizer.decode([token]), label != IGNORE
        if pieces and pieces[-1][1] == trained:
            pieces[-1] = (pieces[-1][0] + text, trained)
        else:
            pieces.append((text, trained))
    return Masked(pieces)
