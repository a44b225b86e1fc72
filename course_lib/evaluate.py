"""Did personalization work, and what did it cost? Scores every later notebook reuses.

- persona score: share of held-out persona questions whose answer contains a keyword that fits
  the question (a name question needs the name, a creator question the creator...), so a model
  repeating one memorized sentence cannot pass them all;
- distinct-answer share: how many different answers the model gives (1.0 = all different);
- retention: of the general questions the base model answered right, the share the
  personalized model still answers right (what fine-tuning made it forget);
- ROUGE-L and BLEU: how much of a reference answer's wording an answer shares (written here to
  keep the dependencies small);
- ``perplexity_from_loss``: the perplexity a validation loss stands for.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from course_lib import paths, versions

versions.warn_once()  # one sentence if transformers, peft, ... differ from the tested versions

EVAL_SETS = {"persona": ("persona", "eval.jsonl"), "general": ("general", "eval.jsonl"),
             "new_facts": ("persona", "new_facts_eval.jsonl")}


def load_eval_set(name_or_path: str) -> list[dict]:
    """A held-out set: ``persona``, ``general``, ``new_facts`` or a JSONL path (question, keywords)."""
    path = paths.data_samples(*EVAL_SETS[name_or_path]) if name_or_path in EVAL_SETS else Path(name_or_path)
    items = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            item = json.loads(line)
            if not item.get("question") or not item.get("keywords"):
                raise ValueError(f"{path.name}:{number}: an evaluation item needs 'question' and 'keywords'")
            items.append(item)
    return items


# Prompts answered together. On a CPU one step of a batch of 80 costs far less than five steps of 16
# (measured on 160 persona questions, AMD EPYC 2 cores: 56 s against 81 s): fewer sequential decoding
# steps. The price is memory: the KV cache of 80 answers of ~120 positions takes about 440 MB in fp32
# for the 135M model (30 layers x keys and values x 3 KV heads of 64), close to its 540 MB of weights.
GENERATE_BATCH = 80


def generate(model, tokenizer, prompts: list[str], max_new_tokens: int = 48, batch_size: int = GENERATE_BATCH,
             progress: bool = True, samples: int = 1, temperature: float = 0.0) -> list[str]:
    """Answers to PROMPTS, batched with left padding (what a chat user would get).

    Greedy by default. With a TEMPERATURE above 0 each prompt gets SAMPLES sampled answers, one after
    the other in the returned list (a reinforcement-learning "group", appendix A6).
    """
    import torch
    from tqdm.auto import tqdm

    if samples > 1 and temperature <= 0:
        raise ValueError(f"samples={samples} needs a temperature above 0: greedy decoding gives one answer per prompt")
    side, tokenizer.padding_side = tokenizer.padding_side, "left"  # new tokens follow each prompt
    answers: list[str] = []
    try:
        starts = range(0, len(prompts), batch_size)
        for start in tqdm(starts, desc="generating", unit="batch", disable=not progress):
            chats = [[{"role": "user", "content": p}] for p in prompts[start:start + batch_size]]
            inputs = tokenizer.apply_chat_template(chats, add_generation_prompt=True, return_tensors="pt",
                                                   return_dict=True, padding=True).to(model.device)
            with torch.no_grad():
                if temperature > 0:  # top_k=0: every token stays possible, as TRL's GRPOTrainer samples
                    out = model.generate(**inputs, max_new_tokens=max_new_tokens, use_cache=True,
                                         pad_token_id=tokenizer.pad_token_id, do_sample=True, temperature=temperature,
                                         top_k=0, num_return_sequences=samples)
                    new = out[:, inputs["input_ids"].shape[1]:].tolist()
                else:
                    new = greedy_in_rounds(model, tokenizer, inputs, max_new_tokens)
            answers += [a.strip() for a in tokenizer.batch_decode(new, skip_special_tokens=True)]
    finally:
        tokenizer.padding_side = side
    return answers


ROUND_TOKENS = 12  # greedy answers grow in rounds of this many tokens; answers that ended leave between rounds


def greedy_in_rounds(model, tokenizer, inputs, max_new_tokens: int, round_tokens: int = ROUND_TOKENS) -> list[list[int]]:
    """Greedy ``generate`` in rounds, dropping the rows whose answer ended: the new token ids per row.

    One ``generate`` call keeps computing every row until the longest answer ends: a persona answer
    of twenty tokens in a batch whose longest runs to forty-eight costs as much as the long one (more
    than half of a tuned model's decoding went to answers that had already ended). Between rounds the
    finished rows leave the batch and its KV cache (``Cache.batch_select_indices``), and the next
    round continues from the cache, as transformers documents for re-using a cache. Same greedy
    tokens; a smaller batch can round a float differently, so a rare near-tie may flip.
    """
    import torch

    stop = model.generation_config.eos_token_id
    stop = set(stop if isinstance(stop, (list, tuple)) else [stop]) - {None}
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    rows, new, cache, made = list(range(len(ids))), [[] for _ in ids], None, 0
    while rows and made < max_new_tokens:
        out = model.generate(input_ids=ids, attention_mask=mask, past_key_values=cache, do_sample=False,
                             max_new_tokens=min(round_tokens, max_new_tokens - made), use_cache=True,
                             pad_token_id=tokenizer.pad_token_id, return_dict_in_generate=True)
        fresh = out.sequences[:, ids.shape[1]:]
        going = []
        for i, (row, tokens) in enumerate(zip(rows, fresh.tolist())):
            new[row] += tokens
            if not stop & set(tokens):
                going.append(i)
        made += fresh.shape[1]
        if not going or made >= max_new_tokens:
            break
        keep = torch.tensor(going, device=ids.device)
        cache = out.past_key_values
        cache.batch_select_indices(keep)
        ids = out.sequences[keep]
        mask = torch.cat([mask, torch.ones_like(fresh)], dim=1)[keep]
        rows = [rows[i] for i in going]
    return new


def passes(answer: str, item: dict) -> bool:
    """Any one of the item's keywords, and all of its ``must_all`` words (case-insensitive)."""
    text = answer.lower()
    return (any(k.lower() in text for k in item["keywords"])
            and all(k.lower() in text for k in item.get("must_all", [])))


def distinct_share(answers: list[str]) -> float:
    normalized = {" ".join(a.lower().split()) for a in answers}
    return len(normalized) / len(answers) if answers else 0.0


@dataclass
class EvalResult:
    name: str
    score: float
    passed: list[bool]
    answers: list[str]
    items: list[dict] = field(repr=False)
    by_category: dict = field(default_factory=dict)
    distinct_answer_share: float = 0.0

    def table(self, limit: int = 8):
        """A few questions with their answers and verdicts (a pandas DataFrame in Jupyter)."""
        import pandas as pd

        rows = [{"question": i["question"], "answer": a, "pass": "✓" if p else "✗"}
                for i, a, p in list(zip(self.items, self.answers, self.passed))[:limit]]
        return pd.DataFrame(rows)


def score_answers(name: str, items: list[dict], answers: list[str]) -> EvalResult:
    """Score ANSWERS to ITEMS (overall, per category, and how many answers differ)."""
    passed = [passes(a, i) for a, i in zip(answers, items)]
    by_category: dict[str, list[bool]] = {}
    for item, ok in zip(items, passed):
        by_category.setdefault(item.get("category", "all"), []).append(ok)
    return EvalResult(
        name=name, score=round(sum(passed) / len(passed), 3), passed=passed, answers=answers, items=items,
        by_category={c: round(sum(v) / len(v), 3) for c, v in by_category.items()},
        distinct_answer_share=round(distinct_share(answers), 3))


def evaluate(model, tokenizer, eval_set: str = "persona", max_new_tokens: int = 48, limit: int = 0) -> EvalResult:
    """Ask every question of EVAL_SET and score the answers."""
    return evaluate_sets(model, tokenizer, (eval_set,), max_new_tokens, limit)[eval_set]


def evaluate_sets(model, tokenizer, eval_sets=("persona", "general"), max_new_tokens: int = 48, limit: int = 0,
                  batch_size: int = GENERATE_BATCH) -> dict[str, EvalResult]:
    """EVALUATE for several sets at once: their questions share batches (``GENERATE_BATCH``)."""
    items = {name: load_eval_set(name)[:limit or None] for name in eval_sets}
    answers = generate(model, tokenizer, [i["question"] for name in eval_sets for i in items[name]], max_new_tokens,
                       batch_size)
    results, start = {}, 0
    for name in eval_sets:
        results[name] = score_answers(name, items[name], answers[start:start + len(items[name])])
        start += len(items[name])
    return results


def remembered(model, tokenizer, key: str, eval_sets, run_dir, max_new_tokens: int = 48, limit: int = 0):
    """EVALUATE_SETS for a model that does not change, answered once per run directory and then reused.

    KEY names the model: the base model's preset or hub id, or ``runs.fingerprint(folder)`` for a
    saved adapter. The untrained base and notebook 02's adapter never change once made, so notebooks
    02 and 06 share their answers instead of spending a quarter of a minute each regenerating them.
    The cache is keyed by KEY, questions and settings, not by which questions shared a batch: greedy
    answers with left padding and an attention mask do not depend on their batch-mates, up to
    float rounding. EVAL_SETS is one set's name (returns its EvalResult) or several (returns
    {name: EvalResult}); the sets not cached yet are answered together, as ``evaluate_sets`` does.
    """
    import hashlib

    names = (eval_sets,) if isinstance(eval_sets, str) else tuple(eval_sets)
    items = {name: load_eval_set(name)[:limit or None] for name in names}
    caches = {name: paths.run_dir(run_dir) / "eval" / "{}-{}.json".format(name, hashlib.sha256(
        json.dumps([key, items[name], max_new_tokens]).encode()).hexdigest()[:16]) for name in names}
    answers = {name: json.loads(caches[name].read_text())["answers"] for name in names if caches[name].exists()}
    for name in answers:
        print(f"{key}: {name} answers reused from {caches[name].name}.")
    missing = [name for name in names if name not in answers]
    if missing:
        fresh = evaluate_sets(model, tokenizer, missing, max_new_tokens, limit)
        for name in missing:
            answers[name] = fresh[name].answers
            caches[name].parent.mkdir(parents=True, exist_ok=True)
            caches[name].write_text(json.dumps({"model": key, "answers": answers[name]}, indent=1))
    results = {name: score_answers(name, items[name], answers[name]) for name in names}
    return results[names[0]] if isinstance(eval_sets, str) else results


def retention(base: EvalResult, tuned: EvalResult) -> float:
    """Of the questions the base model got right, the share the tuned model still gets right."""
    kept = [t for b, t in zip(base.passed, tuned.passed) if b]
    return round(sum(kept) / len(kept), 3) if kept else float("nan")


def next_token_logps(model, ids, attention_mask=None, first: int = 0):
    """log p(ids[:, t + 1] | ids[:, :t + 1]) for t = FIRST .. length - 2, one row per sequence.

    Only those positions' logits are computed (transformers' ``logits_to_keep`` takes the positions
    to keep): for a short answer after a long prompt, the vocabulary-wide product and softmax at
    every prompt position would be most of the cost. Differentiable; wrap in ``torch.no_grad`` to score.
    """
    import torch

    keep = torch.arange(first, ids.shape[1] - 1, device=ids.device)
    logits = model(input_ids=ids, attention_mask=attention_mask, logits_to_keep=keep).logits.float()
    return torch.log_softmax(logits, -1).gather(-1, ids[:, first + 1:, None]).squeeze(-1)


def perplexity_from_loss(loss: float) -> float:
    """e ** LOSS (a mean cross-entropy in nats), rounded; NaN stays NaN."""
    return round(math.exp(loss), 3) if loss == loss else float("nan")


def words(text: str) -> list[str]:
    """Lowercased words and punctuation marks: the tokens ROUGE and BLEU compare."""
    return re.findall(r"\w+|[^\w\s]", text.lower())


def _lcs(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence (dynamic programming, one row at a time)."""
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F1: the longest common subsequence of words, as precision and recall combined.

    Order matters (unlike bag-of-words overlap) but gaps are allowed, so "Sprout, made by
    Greenleaf" still matches "I'm Sprout, a helper made by Greenleaf Labs". Written here (a dozen
    lines) rather than with the `rouge-score` package, which pulls in nltk and absl.
    """
    c, r = words(candidate), words(reference)
    lcs = _lcs(c, r)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(c), lcs / len(r)
    return 2 * precision * recall / (precision + recall)


def _ngrams(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def bleu(candidates: list[str], references: list[str], max_n: int = 4, smooth: bool = True) -> float:
    """Corpus BLEU (Papineni et al. 2002) with one reference per candidate, on a 0-1 scale.

    The geometric mean of the clipped n-gram precisions (n = 1..4, counts summed over the corpus),
    times a brevity penalty exp(1 - r/c) when the candidates are shorter in total (c) than the
    references (r), so that answering with one safe word does not score high. With ``smooth``, an
    n-gram order with no match counts as 1/(2^k * total) instead of 0 (sacrebleu's "exp"
    smoothing), so short answers are not all zero. Gives sacrebleu's corpus_score (smooth "exp",
    divided by 100) on text split by ``words``; written here to keep the dependencies small.
    """
    matches, totals = [0] * max_n, [0] * max_n
    c_len = r_len = 0
    for cand, ref in zip(candidates, references):
        c, r = words(cand), words(ref)
        c_len, r_len = c_len + len(c), r_len + len(r)
        for n in range(1, max_n + 1):
            cand_ngrams, ref_ngrams = _ngrams(c, n), _ngrams(r, n)
            matches[n - 1] += sum(min(count, ref_ngrams[g]) for g, count in cand_ngrams.items())
            totals[n - 1] += max(len(c) - n + 1, 0)
    if matches[0] == 0:
        return 0.0  # not one word in common: nothing to smooth
    log_precisions, k = [], 1
    for m, t in zip(matches, totals):
        if m == 0:
            if not smooth or t == 0:
                return 0.0
            k *= 2
            m = 1 / k
        log_precisions.append(math.log(m / t))
    brevity = 1.0 if c_len > r_len else math.exp(1 - r_len / c_len)
    return brevity * math.exp(sum(log_precisions) / max_n)


def side_by_side(before: EvalResult, after: EvalResult, limit: int = 6):
    """The same questions answered before and after training (a DataFrame)."""
    import pandas as pd

    rows = [{"question": i["question"], "before": b, "after": a}
            for i, b, a in list(zip(before.items, before.answers, after.answers))[:limit]]
    return pd.DataFrame(rows)
