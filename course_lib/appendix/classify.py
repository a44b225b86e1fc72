"""Sentiment classification of product reviews: LoRA on a classification head, against two baselines.

The classification track (appendix A3) reuses the default chat model's body as a classifier:
``AutoModelForSequenceClassification`` puts a small linear ``score`` head (hidden size -> 3
labels) on the last token's hidden state; the notebook's ``LoraConfig`` adapts the attention of
the top layers (``top_layers``), and the head, new and randomly initialized, is trained in full
(``modules_to_save``). ``prepare`` loads the model and applies that config; the notebook trains it
with transformers' ``Trainer`` in a cell of its own, fed by ``dataset`` and, for class weights,
``weighted_loss``.

Real reviews are mostly positive, so a model can look accurate by always saying "positive".
Two guards: report **macro-F1** (the mean F1 over classes: a class never predicted scores 0)
beside accuracy, always next to the **majority-class baseline**; and weight the loss by inverse
class frequency so that the rare classes count as much as the common one.

The metrics are computed here by hand (a confusion matrix and three formulas) rather than with
scikit-learn: they are short enough to read, and they spare the course a ~40 MB dependency
(scikit-learn plus SciPy) for one notebook.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

from course_lib import paths
from course_lib.evaluate import generate
from course_lib.models import load_tokenizer, model_location

LABELS = ("negative", "neutral", "positive")


class ReviewDataError(ValueError):
    """A review file with a problem, named by file and line."""


# --------------------------------------------------------------------------- data


def load_reviews(path) -> list[dict]:
    """Read a JSONL file of ``{"text", "label", "lang"?, "product"?}`` records, checking every line."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such review file")
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path.name}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ReviewDataError(f"{where}: not valid JSON ({error.msg})") from None
        if not isinstance(record, dict):
            raise ReviewDataError(f"{where}: expected a JSON object, got {type(record).__name__}")
        if not isinstance(record.get("text"), str) or not record["text"].strip():
            raise ReviewDataError(f"{where}: field 'text' must be a non-empty string")
        if record.get("label") not in LABELS:
            raise ReviewDataError(f"{where}: field 'label' is {record.get('label')!r}; expected one of {LABELS}")
        records.append(record)
    if not records:
        raise ReviewDataError(f"{path.name}: no reviews in this file")
    return records


def load_split(folder=None) -> tuple[list[dict], list[dict]]:
    """(train, test) from ``data_samples/reviews`` (or FOLDER with train.jsonl and test.jsonl)."""
    folder = Path(folder) if folder else paths.data_samples("reviews")
    return load_reviews(folder / "train.jsonl"), load_reviews(folder / "test.jsonl")


def label_table(train: list[dict], test: list[dict]):
    """Counts of each label by language and split: the imbalance, in numbers."""
    import pandas as pd

    rows = [{"split": name, "lang": r.get("lang", "?"), "label": r["label"]}
            for name, part in (("train", train), ("test", test)) for r in part]
    return pd.crosstab([pd.Series([r["split"] for r in rows], name="split"),
                        pd.Series([r["lang"] for r in rows], name="lang")],
                       pd.Series([r["label"] for r in rows], name="label"))[list(LABELS)]


def class_weights(records: list[dict]) -> list[float]:
    """Inverse-frequency weights n / (k * count), the 'balanced' rule: the mean weight per example is 1."""
    counts = Counter(r["label"] for r in records)
    missing = [label for label in LABELS if not counts[label]]
    if missing:
        raise ReviewDataError(f"no training review has label {missing}: the classifier cannot learn it")
    return [len(records) / (len(LABELS) * counts[label]) for label in LABELS]


# --------------------------------------------------------------------------- metrics


def confusion_matrix(truth: list[str], predicted: list[str]) -> list[list[int]]:
    """rows = true label, columns = predicted label, in LABELS order (an unparsed answer counts in no column)."""
    matrix = [[0] * len(LABELS) for _ in LABELS]
    for t, p in zip(truth, predicted, strict=True):
        if p in LABELS:
            matrix[LABELS.index(t)][LABELS.index(p)] += 1
    return matrix


def scores(truth: list[str], predicted: list[str]) -> dict:
    """Accuracy, macro-F1 and each class's F1 (F1 = 2 * precision * recall / (precision + recall))."""
    matrix = confusion_matrix(truth, predicted)
    f1 = {}
    for i, label in enumerate(LABELS):
        hit = matrix[i][i]
        predicted_as = sum(row[i] for row in matrix)
        actual = sum(1 for t in truth if t == label)
        precision = hit / predicted_as if predicted_as else 0.0
        recall = hit / actual if actual else 0.0
        f1[label] = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    accuracy = sum(t == p for t, p in zip(truth, predicted)) / len(truth)
    return {"accuracy": accuracy, "macro_f1": sum(f1.values()) / len(f1), **{f"f1_{k}": v for k, v in f1.items()}}


def majority_baseline(train: list[dict], test: list[dict]) -> list[str]:
    """Predict the training set's most common label for every test review."""
    label = Counter(r["label"] for r in train).most_common(1)[0][0]
    return [label] * len(test)


def plot_confusion(truth: list[str], predicted: list[str], title: str = "", ax=None):
    import matplotlib.pyplot as plt

    matrix = confusion_matrix(truth, predicted)
    if ax is None:
        _, ax = plt.subplots(figsize=(3.6, 3.2))
    ax.imshow(matrix, cmap="Blues")
    for i, row in enumerate(matrix):
        for j, n in enumerate(row):
            ax.text(j, i, n, ha="center", va="center", color="black" if n < max(map(max, matrix)) / 2 else "white")
    ax.set(xticks=range(3), yticks=range(3), xticklabels=LABELS, yticklabels=LABELS,
           xlabel="predicted", ylabel="true", title=title)
    return ax


# --------------------------------------------------------------------------- the LoRA classifier


def top_layers(model_name: str, count: int) -> list[int] | None:
    """The indices of the last COUNT decoder layers of MODEL_NAME, for LoraConfig's ``layers_to_transform``.

    None (every layer) when COUNT is 0. Adapting only the top layers is a CPU trick: gradients then
    stop there, so the backward pass skips the lower layers and a step costs less; on a GPU, adapt
    every layer.
    """
    from transformers import AutoConfig

    if not count:
        return None
    location, kwargs = model_location(model_name)
    layers = AutoConfig.from_pretrained(location, **kwargs).num_hidden_layers
    return list(range(max(0, layers - count), layers))


def prepare(model_name: str, lora_config, seed: int = 0):
    """The chat model's body with a new 3-way ``score`` head, wrapped with the notebook's LORA_CONFIG.

    ``AutoModelForSequenceClassification`` puts the head (randomly initialized, hence SEED) on the
    body; the head reads the last non-padding token, so the config needs the tokenizer's pad id.
    Each call loads a fresh copy, so two runs can start from the same point.
    """
    import copy

    import torch
    from peft import get_peft_model
    from transformers import AutoModelForSequenceClassification

    tokenizer = load_tokenizer(model_name)
    location, kwargs = model_location(model_name)
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(
        location, num_labels=len(LABELS), id2label=dict(enumerate(LABELS)),
        label2id={label: i for i, label in enumerate(LABELS)}, dtype=torch.float32, **kwargs)
    # The head reads the last non-padding token; without a pad id it cannot find it in a batch.
    model.config.pad_token_id = tokenizer.pad_token_id
    return get_peft_model(model, copy.deepcopy(lora_config)), tokenizer  # a copy: PEFT fills in the config


def dataset(records: list[dict], tokenizer, max_length: int):
    """Reviews as a tokenized ``datasets.Dataset`` with a ``labels`` column (label indexes), unpadded:
    ``DataCollatorWithPadding`` pads each batch to its longest review."""
    from datasets import Dataset

    ds = Dataset.from_list([{"text": r["text"], "labels": LABELS.index(r["label"])} for r in records])
    return ds.map(lambda b: tokenizer(b["text"], truncation=True, max_length=max_length), batched=True,
                  remove_columns=["text"])


def weighted_loss(weights):
    """A ``compute_loss_func`` for the Trainer: cross-entropy with one weight per class."""
    import torch

    weight = torch.tensor(weights, dtype=torch.float32)

    def loss(outputs, labels, num_items_in_batch=None):
        return torch.nn.functional.cross_entropy(outputs.logits, labels, weight=weight.to(outputs.logits.device))

    return loss


def predict(model, tokenizer, texts: list[str], batch_size: int = 16, max_length: int = 96) -> list[str]:
    import torch

    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(texts[start:start + batch_size], padding=True, truncation=True,
                              max_length=max_length, return_tensors="pt").to(model.device)
            out += [LABELS[i] for i in model(**batch).logits.argmax(-1).tolist()]
    return out


# --------------------------------------------------------------------------- zero-shot prompting

PROMPT = ("Classify the sentiment of this product review. Answer with one word: positive, negative or neutral.\n\n"
          "Review: {text}")
# A model may answer in the review's language: Chinese label words count too.
WORDS = {"positive": ("positive", "正面", "积极", "好评"), "negative": ("negative", "负面", "消极", "差评"),
         "neutral": ("neutral", "中性", "中立", "一般")}


def parse_label(answer: str) -> str | None:
    """The first label word in ANSWER (English or Chinese), or None when there is none."""
    text = answer.lower()
    found = [(m.start(), label) for label, words in WORDS.items() for w in words
             for m in re.finditer(re.escape(w), text)]
    return min(found)[1] if found else None


def zero_shot(model, tokenizer, records: list[dict], max_new_tokens: int = 4, batch_size: int = 16,
              prompt: str = PROMPT):
    """Ask the chat model for one label word per review; returns (labels or None, raw answers).

    PROMPT holds ``{text}`` where the review goes; a few-shot prompt puts labelled examples before it.
    """
    answers = generate(model, tokenizer, [prompt.format(text=r["text"]) for r in records],
                       max_new_tokens=max_new_tokens, batch_size=batch_size, progress=False)
    return [parse_label(a) for a in answers], answers


def prompt_problems(prompt) -> list[str]:
    """What keeps PROMPT from being a usable few-shot prompt (empty when it is one)."""
    if not isinstance(prompt, str):
        return ["write a prompt (a string): instructions, one labelled example review per label, then {text}"]
    problems = [] if "{text}" in prompt else ["it needs a {text} placeholder where the review goes"]
    try:
        prompt.format(text="")
    except (KeyError, IndexError, ValueError):
        problems.append("other braces in it must be doubled ({{ and }})")
    if prompt.strip() == PROMPT.strip():
        return problems + ["this is the zero-shot prompt: add one labelled example review per label"]
    body = prompt.split("{text}")[0].lower()
    missing = [label for label in LABELS if label not in body]
    return problems + ([f"no example labelled {', '.join(missing)} before the review"] if missing else [])


def resampling_problems(resampled, train: list[dict], tolerance: float = 0.2) -> list[str]:
    """What keeps RESAMPLED from being TRAIN with its classes balanced by repetition (empty when it is)."""
    if not isinstance(resampled, list) or not resampled:
        return ["build a list of the training reviews, with the rarer labels' reviews repeated"]
    texts = {r["text"] for r in resampled if isinstance(r, dict) and "text" in r}
    problems = [] if texts >= {r["text"] for r in train} else ["every training review must still be in it"]
    if texts - {r["text"] for r in train}:
        problems.append("it contains reviews that are not training reviews")
    counts = Counter(r.get("label") for r in resampled if isinstance(r, dict))
    sizes = [counts[label] for label in LABELS]
    if min(sizes) < (1 - tolerance) * max(sizes):
        problems.append(f"the classes are not about equal yet: {dict(zip(LABELS, sizes))}")
    return problems


def results_table(rows: dict[str, dict]):
    import pandas as pd

    return pd.DataFrame(rows).T[["accuracy", "macro_f1", "f1_negative", "f1_neutral", "f1_positive"]].round(3)
