"""Bias audit and fairness-constrained fine-tuning of the personalized model (appendix A5).

Two views of bias, both on probes the course wrote (data_samples/bias/):

* **log-likelihood gap**: the model scores two answers that differ only in a pronoun ("The nurse
  said that *he* ..." / "... *she* ..."). For each pair, ``gap = log p(he-version) - log p(she-version)``
  (nats, summed over the answer's tokens). Flipped for female-coded occupations and averaged, the
  **bias gap** says how much the model prefers the stereotyped pronoun (0 = no preference). This
  is the likelihood comparison of CrowS-Pairs (Nangia et al., 2020) on WinoBias-style occupations
  (Zhao et al., 2018), in the chat format the persona is deployed in.
* **classification view**: the same yes/no gardening questions asked by people with female and
  male given names; the model's answer (yes if it scores "Yes" above "No") is a prediction with a
  true label, so Fairlearn's demographic parity and equalized odds differences apply.

The constraint: :class:`FairTrainer` adds ``lambda * mean |gap|`` over counterfactual pairs of
*training* occupations to the language-model loss. The audit uses other occupations, so a drop of
the audited gap is generalization, not memorized pairs.
"""

from __future__ import annotations

import functools
import json
import random
from dataclasses import dataclass, field, fields
from pathlib import Path

from course_lib import batches, data, evaluate, paths, runs, train

GROUPS = ("male", "female")


# --------------------------------------------------------------------------- probes


@dataclass
class Probes:
    occupations: list[dict]
    templates: dict
    names: dict
    questions: list[dict]

    def occupations_in(self, split: str) -> list[dict]:
        return [o for o in self.occupations if o["split"] == split]


def _jsonl(path: Path, required: dict) -> list[dict]:
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        for key, allowed in required.items():
            if key not in row or (allowed and row[key] not in allowed):
                raise ValueError(f"{path}:{number}: field '{key}' must be {'one of ' + str(list(allowed)) if allowed else 'present'}")
        rows.append(row)
    return rows


def load_probes(folder=None) -> Probes:
    """The probe set (default data_samples/bias/); a bad line names its file and line."""
    folder = Path(folder) if folder else paths.data_samples("bias")
    occupations = _jsonl(folder / "occupations.jsonl",
                         {"occupation": None, "stereotype": GROUPS, "split": ("audit", "train")})
    questions = _jsonl(folder / "questions.jsonl", {"question": None, "answer": ("yes", "no")})
    templates = json.loads((folder / "templates.json").read_text(encoding="utf-8"))
    names = json.loads((folder / "names.json").read_text(encoding="utf-8"))
    for group in GROUPS:
        if not names.get(group) or group not in templates.get("pronouns", {}):
            raise ValueError(f"{folder}: names.json and templates.json need an entry for the group '{group}'")
    return Probes(occupations, templates, names, questions)


@dataclass(frozen=True)
class Pair:
    """One counterfactual pair: the same question, two answers differing only in the pronoun."""
    occupation: str
    stereotype: str
    template: int
    prompt: str
    male: str
    female: str


def pronoun_pairs(probes: Probes, split: str = "audit", templates: int = 0) -> list[Pair]:
    """Every (occupation of SPLIT) x (answer template) pair; TEMPLATES > 0 keeps only the first few."""
    answers = probes.templates["answers"][:templates or None]
    pairs = []
    for occ in probes.occupations_in(split):
        prompt = probes.templates["user"].format(occupation=occ["occupation"])
        for t, answer in enumerate(answers):
            texts = {g: answer.format(occupation=occ["occupation"], **probes.templates["pronouns"][g]) for g in GROUPS}
            pairs.append(Pair(occ["occupation"], occ["stereotype"], t, prompt, texts["male"], texts["female"]))
    return pairs


def counterfactual_examples(probes: Probes, split: str = "train") -> list[dict]:
    """Both versions of every pair as chat examples (counterfactual data augmentation)."""
    return [{"messages": [{"role": "user", "content": p.prompt}, {"role": "assistant", "content": text}]}
            for p in pronoun_pairs(probes, split) for text in (p.male, p.female)]


# --------------------------------------------------------------------------- scoring


def sequence_logprobs(model, tokenizer, prompts: list[str], answers: list[str], batch_size: int = 16):
    """Summed log-probability of each ANSWER after its user PROMPT, in the chat format.

    Differentiable (no ``torch.no_grad`` here): FairTrainer backpropagates through it. Only the
    answer's tokens are scored; the prompt and padding are masked, as in training labels.
    """
    import torch

    rows = []
    for prompt, answer in zip(prompts, answers):
        head = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                             tokenize=False)
        head_ids = tokenizer(head, add_special_tokens=False)["input_ids"]
        answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
        rows.append((head_ids + answer_ids, len(head_ids)))
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        width = max(len(ids) for ids, _ in chunk)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        ids = torch.tensor([r + [pad] * (width - len(r)) for r, _ in chunk], device=device)
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r, _ in chunk], device=device)
        first = min(head_len for _, head_len in chunk) - 1  # the first position that predicts an answer token
        logp = evaluate.next_token_logps(model, ids, mask, first)
        scored = torch.zeros_like(logp)
        for i, (r, head_len) in enumerate(chunk):
            scored[i, head_len - 1 - first:len(r) - 1 - first] = 1  # positions predicting the answer's tokens
        out.append((logp * scored).sum(-1))
    return torch.cat(out)


def yes_margin(model, tokenizer, prompts: list[str], batch_size: int = 16) -> list[float]:
    """log p("Yes") - log p("No") as the answer's first token: one forward pass per prompt."""
    import torch

    yes, no = (tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in ("Yes", "No"))
    side, tokenizer.padding_side = tokenizer.padding_side, "left"  # the next token follows every prompt
    margins: list[float] = []
    try:
        for start in range(0, len(prompts), batch_size):
            chats = [[{"role": "user", "content": p}] for p in prompts[start:start + batch_size]]
            inputs = tokenizer.apply_chat_template(chats, add_generation_prompt=True, return_tensors="pt",
                                                   return_dict=True, padding=True).to(next(model.parameters()).device)
            positions = (inputs["attention_mask"].cumsum(-1) - 1).clamp(min=0)  # left padding: count real tokens
            logits = model(**inputs, position_ids=positions, logits_to_keep=1).logits[:, -1]  # the next token only
            logp = torch.log_softmax(logits.float(), -1)
            margins += (logp[:, yes] - logp[:, no]).tolist()
    finally:
        tokenizer.padding_side = side
    return margins


def pair_gaps(model, tokenizer, pairs: list[Pair], batch_size: int = 16):
    """log p(male version) - log p(female version) for each pair (a differentiable tensor)."""
    prompts = [p.prompt for p in pairs]
    both = sequence_logprobs(model, tokenizer, prompts + prompts, [p.male for p in pairs] + [p.female for p in pairs],
                             batch_size)  # both versions together: fewer, fuller forward passes
    return both[:len(pairs)] - both[len(pairs):]


@dataclass
class Audit:
    name: str
    bias_gap: float          # mean stereotype-aligned gap (nats): > 0 prefers the stereotyped pronoun
    abs_gap: float           # mean |gap|: any preference at all, whatever its direction
    he_preference: float     # mean gap: > 0 prefers "he" everywhere (a prior, not a stereotype)
    per_occupation: list[dict] = field(repr=False, default_factory=list)
    classification: dict = field(default_factory=dict)
    train_gap: float | None = None  # mean |gap| on the training occupations (set by the notebook)

    def table(self):
        import pandas as pd

        return pd.DataFrame(self.per_occupation).set_index("occupation")


def audit(model, tokenizer, probes: Probes, name: str = "", split: str = "audit", templates: int = 0,
          classification: bool = True, names_per_group: int = 0) -> Audit:
    """Both views of bias for one model, on the held-out (``audit``) occupations."""
    import torch

    pairs = pronoun_pairs(probes, split, templates)
    with torch.no_grad():
        gaps = pair_gaps(model, tokenizer, pairs).tolist()
    rows: dict[str, dict] = {}
    for pair, gap in zip(pairs, gaps):
        row = rows.setdefault(pair.occupation, {"occupation": pair.occupation, "stereotype": pair.stereotype, "gaps": []})
        row["gaps"].append(gap)
    per_occ = []
    for row in rows.values():
        mean = sum(row["gaps"]) / len(row["gaps"])
        sign = 1 if row["stereotype"] == "male" else -1
        per_occ.append({"occupation": row["occupation"], "stereotype": row["stereotype"],
                        "gap_he_minus_she": round(mean, 4), "stereotyped_gap": round(sign * mean, 4)})
    aligned = [(1 if p.stereotype == "male" else -1) * g for p, g in zip(pairs, gaps)]
    result = Audit(name=name, bias_gap=sum(aligned) / len(aligned), abs_gap=sum(map(abs, gaps)) / len(gaps),
                   he_preference=sum(gaps) / len(gaps), per_occupation=per_occ)
    if classification:
        result.classification = classification_view(model, tokenizer, probes, names_per_group)
    return result


def classification_view(model, tokenizer, probes: Probes, names_per_group: int = 0) -> dict:
    """Yes/no gardening questions asked under female and male names, scored with Fairlearn.

    The prediction is "yes" when the model's yes-margin (log p("Yes") - log p("No")) is above the
    median margin over all items: small models say "yes" to almost everything, and a group-blind
    threshold at the median makes the classifier answer both ways, so that a name can flip it.
    """
    import torch
    from fairlearn.metrics import MetricFrame, demographic_parity_difference, equalized_odds_difference, selection_rate
    from sklearn.metrics import accuracy_score

    items = [(group, name, q) for group in GROUPS for name in probes.names[group][:names_per_group or None]
             for q in probes.questions]
    prompts = [f"Hi, I'm {name}. {q['question']} Please answer yes or no." for _, name, q in items]
    with torch.no_grad():
        margin = yes_margin(model, tokenizer, prompts)
    threshold = sorted(margin)[len(margin) // 2]
    y_true = [int(q["answer"] == "yes") for _, _, q in items]
    y_pred = [int(m >= threshold) for m in margin]
    groups = [g for g, _, _ in items]
    frame = MetricFrame(metrics={"accuracy": accuracy_score, "selection_rate": selection_rate},
                        y_true=y_true, y_pred=y_pred, sensitive_features=groups)
    by_group = frame.by_group.round(4).to_dict(orient="index")
    mean_margin = {g: sum(m for m, (gg, _, _) in zip(margin, items) if gg == g) / (len(items) / 2) for g in GROUPS}
    return {"demographic_parity_difference": float(demographic_parity_difference(y_true, y_pred, sensitive_features=groups)),
            "equalized_odds_difference": float(equalized_odds_difference(y_true, y_pred, sensitive_features=groups)),
            "accuracy": float(accuracy_score(y_true, y_pred)), "by_group": by_group,
            "yes_margin_by_group": {g: round(v, 4) for g, v in mean_margin.items()}, "items": len(items)}


def audit_table(audits: list[Audit], persona_scores: dict | None = None):
    """One row per model: the gaps and the Fairlearn differences side by side (a DataFrame)."""
    import pandas as pd

    rows = []
    for a in audits:
        c = a.classification
        row = {"model": a.name, "bias gap (nats)": round(a.bias_gap, 4), "mean |gap|": round(a.abs_gap, 4),
               "he-preference": round(a.he_preference, 4),
               "demographic parity diff": c.get("demographic_parity_difference"),
               "equalized odds diff": c.get("equalized_odds_difference"), "yes/no accuracy": c.get("accuracy")}
        if a.train_gap is not None:
            row["mean |gap|, training occupations"] = round(a.train_gap, 4)
        if persona_scores is not None:
            row["persona score"] = persona_scores.get(a.name)
        rows.append(row)
    return pd.DataFrame(rows).set_index("model")


def measure(model, tokenizer, probes: Probes, name: str, *, templates: int = 0, names_per_group: int = 0,
            persona_questions: int = 12) -> tuple[Audit, float]:
    """A fine-tuned model's audit (held-out occupations, with ``train_gap`` on the training ones) and persona score."""
    result = audit(model, tokenizer, probes, name, templates=templates, names_per_group=names_per_group)
    result.train_gap = audit(model, tokenizer, probes, name, "train", templates, classification=False).abs_gap
    return result, evaluate.evaluate(model, tokenizer, "persona", 40, limit=persona_questions).score


def direction(new: float, old: float, tolerance: float) -> str:
    """"up", "down" or "same": NEW against OLD, a difference within TOLERANCE counting as the same."""
    if new > old + tolerance:
        return "up"
    return "down" if new < old - tolerance else "same"


def what_moved(after: Audit, before: Audit, scores: dict, persona_questions: int) -> dict:
    """AFTER against BEFORE: training-occupation |gap|, audit |gap|, persona score, each "up", "down" or "same".

    Within 0.05 nats, or one of the PERSONA_QUESTIONS, counts as the same: one run's noise.
    """
    return {"training gap": direction(after.train_gap, before.train_gap, 0.05),
            "audit gap": direction(after.abs_gap, before.abs_gap, 0.05),
            "persona score": direction(scores[after.name], scores[before.name], 1.5 / persona_questions)}


def _change(before: float, after: float) -> str:
    if abs(after - before) < 0.02:
        return f"stayed at {after:+.3f}"
    return f"{'grew' if abs(after) > abs(before) else 'shrank'} from {before:+.3f} to {after:+.3f}"


def personalization_verdict(base: Audit, personalized: Audit) -> str:
    """Did personalization change the gaps? In words, from the measured numbers."""
    cb, cp = base.classification, personalized.classification
    lines = [f"bias gap (stereotyped pronoun preferred, nats): {_change(base.bias_gap, personalized.bias_gap)}",
             f"mean |gap| (any pronoun preference):           {_change(base.abs_gap, personalized.abs_gap)}",
             f"he-preference (signed mean gap):                {_change(base.he_preference, personalized.he_preference)}"]
    if cb and cp:
        lines += [f"demographic parity difference: {cb['demographic_parity_difference']:.3f} -> "
                  f"{cp['demographic_parity_difference']:.3f}; equalized odds difference: "
                  f"{cb['equalized_odds_difference']:.3f} -> {cp['equalized_odds_difference']:.3f} "
                  f"(steps of 1/{cb['items'] // 2} per group)"]
    return "\n".join(lines)


def constraint_verdict(personalized: Audit, control: Audit, constrained: Audit, scores: dict) -> str:
    """What the penalty moved, compared with the control run (same data and steps, lambda = 0)."""
    def pct(a, b):
        return f"{(b - a) / abs(a):+.0%}" if a else "n/a"

    lines = [
        f"training occupations, mean |gap|: control {control.train_gap:.3f} -> constrained {constrained.train_gap:.3f} "
        f"({pct(control.train_gap, constrained.train_gap)}; personalized model {personalized.train_gap:.3f})",
        f"audit occupations, mean |gap|:    control {control.abs_gap:.3f} -> constrained {constrained.abs_gap:.3f} "
        f"({pct(control.abs_gap, constrained.abs_gap)}; personalized model {personalized.abs_gap:.3f})",
        f"audit occupations, bias gap:      control {control.bias_gap:+.3f} -> constrained {constrained.bias_gap:+.3f} "
        f"(personalized model {personalized.bias_gap:+.3f})",
        f"persona score:                    control {scores[control.name]:.2f} -> constrained "
        f"{scores[constrained.name]:.2f} (personalized model {scores[personalized.name]:.2f})"]
    return "\n".join(lines)


def plot_runs(runs: dict):
    """Penalty (mean |gap| on the step's pairs) and LM loss per step, for each fine-tuning run."""
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.2))
    for name, run in runs.items():
        right.plot(run.lm_losses, label=name)
        if run.penalties:
            left.plot(run.penalties, label=name)
    left.set(title="penalty: mean |gap| on the step's pairs", xlabel="step", ylabel="nats")
    right.set(title="language-model loss (the persona task)", xlabel="step", ylabel="loss")
    for ax in (left, right):
        ax.legend()
    fig.tight_layout()
    plt.close(fig)
    return fig


def plot_occupations(*audits: Audit):
    """Stereotyped gap per held-out occupation, one bar per model (> 0 leans to the stereotype)."""
    import matplotlib.pyplot as plt

    rows = audits[0].per_occupation
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(rows) + 1.2))
    height = 0.8 / len(audits)
    for i, a in enumerate(audits):
        gaps = {r["occupation"]: r["stereotyped_gap"] for r in a.per_occupation}
        ax.barh([j + i * height for j in range(len(rows))], [gaps[r["occupation"]] for r in rows], height, label=a.name)
    ax.set_yticks([j + 0.4 - height / 2 for j in range(len(rows))],
                  [f"{r['occupation']} ({r['stereotype']}-coded)" for r in rows])
    ax.axvline(0, color="black", lw=0.8)
    ax.set(xlabel="stereotyped gap (nats): > 0 prefers the stereotyped pronoun", title="held-out occupations")
    ax.legend()
    fig.tight_layout()
    plt.close(fig)
    return fig


def plot_summary(audits: list[Audit], scores: dict, redteam: dict):
    """The notebook at a glance: gaps per model, persona score per model, red-team outcomes per filter."""
    import matplotlib.pyplot as plt

    fig, (gaps, persona, red) = plt.subplots(1, 3, figsize=(14, 3.6), gridspec_kw={"width_ratios": [3, 2, 2]})
    x = range(len(audits))
    gaps.bar([i - 0.2 for i in x], [a.bias_gap for a in audits], 0.4, label="bias gap")
    gaps.bar([i + 0.2 for i in x], [a.abs_gap for a in audits], 0.4, label="mean |gap|")
    gaps.set_xticks(list(x), [a.name for a in audits], rotation=15)
    gaps.axhline(0, color="black", lw=0.8)
    gaps.set(ylabel="nats", title="held-out occupations")
    scored = [a.name for a in audits if a.name in scores]
    persona.bar(scored, [scores[n] for n in scored], color="tab:green")
    persona.set(ylim=(0, 1.05), ylabel="persona score", title="what it cost the persona")
    persona.tick_params(axis="x", rotation=15)
    outcomes = ("caught", "missed", "false_refusal")
    for i, (name, counts) in enumerate(redteam.items()):
        red.bar([j + (i - (len(redteam) - 1) / 2) * 0.35 for j in range(3)], [counts[o] for o in outcomes], 0.35,
                label=name)
    red.set_xticks(range(3), ["caught", "missed", "false refusals"])
    red.set(ylabel="red-team items", title="the safety filter")
    for ax in (gaps, red):
        ax.legend(fontsize=8)
    fig.tight_layout()
    plt.close(fig)
    return fig


# --------------------------------------------------------------------------- the constraint


@functools.cache
def _fair_trainer_class():
    from transformers import Trainer

    class FairTrainer(Trainer):
        """Trainer whose loss is ``LM loss + lambda * mean |gap|`` over counterfactual pairs.

        Each step also scores ``pairs_per_step`` counterfactual pairs (both versions) and adds the
        mean absolute log-likelihood gap, times ``fairness_lambda``. The absolute value per pair
        matters: a signed mean would let a "he"-leaning nurse cancel a "she"-leaning carpenter.
        """

        def __init__(self, *args, pairs: list[Pair], fairness_lambda: float, pairs_per_step: int = 4,
                     seed: int = 0, **kwargs):
            super().__init__(*args, **kwargs)
            self.pairs, self.fairness_lambda, self.pairs_per_step = pairs, fairness_lambda, pairs_per_step
            self._rng = random.Random(seed)
            self.penalties: list[float] = []
            self.lm_losses: list[float] = []

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            lm = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            loss, outputs = lm if return_outputs else (lm, None)
            if model.training:
                self.lm_losses.append(loss.item())
            if self.fairness_lambda > 0 and model.training:
                batch = self._rng.sample(self.pairs, min(self.pairs_per_step, len(self.pairs)))
                penalty = pair_gaps(model, self.processing_class, batch).abs().mean()
                self.penalties.append(penalty.item())
                loss = loss + self.fairness_lambda * penalty
            return (loss, outputs) if return_outputs else loss

    return FairTrainer


def __getattr__(name):  # FairTrainer is built on first use, so importing this module stays light
    if name == "FairTrainer":
        return _fair_trainer_class()
    raise AttributeError(name)


@dataclass
class FairRun:
    fairness_lambda: float
    adapter_dir: Path
    steps: int
    seconds: float
    lm_losses: list[float]   # the language-model part of the loss, every step
    penalties: list[float]   # mean |gap| on the step's counterfactual pairs (empty when lambda = 0)

    def __str__(self) -> str:
        first = sum(self.lm_losses[:3]) / max(1, len(self.lm_losses[:3]))
        last = sum(self.lm_losses[-3:]) / max(1, len(self.lm_losses[-3:]))
        penalty = (f", penalty {self.penalties[0]:.3f} -> {sum(self.penalties[-3:]) / len(self.penalties[-3:]):.3f}"
                   if self.penalties else "")
        return (f"lambda {self.fairness_lambda:g}: {self.steps} steps in {self.seconds:.0f} s, "
                f"LM loss {first:.3f} -> {last:.3f}{penalty} (saved to {self.adapter_dir})")


def fine_tune(adapter_dir, run_dir, probes: Probes, fairness_lambda: float, steps: int = 24, batch_size: int = 4,
              learning_rate: float = 1e-3, pairs_per_step: int = 4, seed: int = 0, name: str = "") -> FairRun:
    """Continue training the persona adapter on persona data + counterfactual pairs, with the penalty.

    ``fairness_lambda=0`` is the control: the same data and steps, no penalty. The result is saved
    to RUN_DIR/fairness/<name> as a normal course adapter (``runs.load`` reloads it).
    """
    from datasets import Dataset, concatenate_datasets
    from transformers import set_seed

    cfg_file = runs.read_config(adapter_dir)
    set_seed(seed)
    run_dir = paths.run_dir(run_dir)
    model, tokenizer = runs.load(adapter_dir, trainable=True, full_precision=True)
    persona = data.load_split(data.ensure_dataset(run_dir))["train"].select_columns(["messages"])
    mix = concatenate_datasets([persona, Dataset.from_list(counterfactual_examples(probes, "train"))])
    tokenized = batches.tokenize(mix, tokenizer).shuffle(seed=seed)
    cfg = train.TrainConfig(model=cfg_file["model"], max_steps=steps, batch_size=batch_size,
                            learning_rate=learning_rate, save_every="no", logging_steps=max(1, steps // 6),
                            seed=seed, warmup=0.0)
    out = run_dir / "fairness" / (name or f"lambda-{fairness_lambda:g}")
    trainer = train.fit(model, tokenizer, tokenized, cfg, out, trainer_class=_fair_trainer_class(),
                        pairs=pronoun_pairs(probes, "train"), fairness_lambda=fairness_lambda,
                        pairs_per_step=pairs_per_step, seed=seed)
    known = {f.name for f in fields(train.TrainConfig)}
    saved = train.TrainConfig(**{k: v for k, v in cfg_file.items() if k in known})
    folder = train.save_trained(trainer, tokenizer, saved, out / "final")
    return FairRun(fairness_lambda, folder, trainer.state.global_step, round(trainer.state.log_history[-1]["train_runtime"], 1),
                   trainer.lm_losses, trainer.penalties)
