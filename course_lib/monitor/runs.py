"""Monitored runs: train one short run with a ``Monitor`` and keep what it recorded.

The diagnosis lab of notebook 03 trains a handful of these (a good learning rate, one too high,
one too low, an overfitting run); each ``Run`` holds its monitor, the training result and settings,
and can add what the answers look like (persona score, ROUGE-L, BLEU) beside the loss.
"""

from __future__ import annotations

import json
import shutil
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from course_lib import data, evaluate, paths, runs, train
from course_lib.monitor.callback import ADVICE, Monitor, Rules, _finite
from course_lib.monitor.figures import DEFAULT_PLOTS


def lab_dir(run_dir=None) -> Path:
    """RUN_DIR/monitor, where monitored runs keep their figures, alert logs, summaries and
    TensorBoard files; the cleaned dataset (RUN_DIR/data) is made first if it is missing."""
    run_dir = paths.run_dir(run_dir)
    data.ensure_dataset(run_dir)
    lab = run_dir / "monitor"
    lab.mkdir(parents=True, exist_ok=True)
    return lab


@dataclass
class Run:
    """One monitored run: its monitor (records, alerts), the training result and settings."""

    name: str
    monitor: Monitor
    result: object
    config: dict
    generation: dict = field(default_factory=dict)

    @property
    def alerts(self) -> list[str]:
        return self.monitor.alert_kinds

    @property
    def train_loss(self) -> float:
        """The final training loss: the mean of the last 3 steps (one batch of 4 is noisy)."""
        losses = [r["loss"] for r in self.monitor.records if "loss" in r][-3:]
        return statistics.fmean(losses) if losses and all(map(_finite, losses)) else float("nan")

    @property
    def val_loss(self) -> float:
        """The final model's validation loss. After early stopping put the best weights back, that
        is the best evaluation's (the weights are the same); train.train reports the last one."""
        if self.monitor.restored:
            return round(self.monitor.best[1], 4)
        return self.result.val_loss

    def summary(self) -> dict:
        return {"alerts": self.alerts, "train_loss": round(self.train_loss, 4), "val_loss": self.val_loss,
                "early_stopped": self.monitor.early_stopped, "steps": self.result.steps,
                "best_step": self.monitor.best[0] if self.monitor.best and self.monitor.eval_every else None,
                "learning_rate": self.config["learning_rate"], **self.generation}

    def advice(self) -> str:
        if not self.alerts:
            return f"{self.name}: no alerts. Healthy: the loss falls and the gradient norm stays in the band."
        return "\n".join(f"{self.name} · {a.kind} (step {a.step}): {ADVICE[a.kind]}" for a in self.monitor.alerts)


# Short lab runs: batches of 4, no warmup (on 10 steps it would spend a whole step at lr 0; real
# runs keep notebook 02's 5%), no checkpoints (scratch runs), a log line every step.
LAB_DEFAULTS = dict(method="lora", batch_size=4, warmup=0.0, logging_steps=1, save_every="no")


def run(name: str, run_dir=None, *, eval_every: int = 0, baseline: bool = True, early_stopping: bool = True,
        rules: Rules | None = None, val_examples: int = 16, generation_limit: int = 0, live: bool | None = None,
        plots=DEFAULT_PLOTS, tensorboard: bool = True, quiet: bool = False, callbacks=(), **train_settings) -> Run:
    """Train one short monitored run (``train.train`` with a ``Monitor``) and return it.

    TRAIN_SETTINGS are TrainConfig fields (model, learning_rate, max_steps, max_examples...).
    VAL_EXAMPLES: evaluating every few steps on the whole validation split would cost more than
    the training on a CPU, so the monitor evaluates on its first VAL_EXAMPLES examples (a fixed
    sample: noisier, but the same examples every time). Runs are scratch: RUN_DIR/monitor/train/NAME
    is replaced each time. GENERATION_LIMIT > 0 adds persona score, ROUGE-L and BLEU at the end.
    """
    lab = lab_dir(run_dir)
    out = lab / "train" / name
    shutil.rmtree(out, ignore_errors=True)
    settings = {**LAB_DEFAULTS, "max_val_examples": val_examples, **train_settings, "output_dir": str(out)}
    monitor = Monitor(name, lab, eval_every=eval_every, baseline=baseline, early_stopping=early_stopping,
                      rules=rules, live=live, plots=plots, tensorboard=tensorboard, quiet=quiet)
    monitor.finish_saves = True
    try:
        result = train.train(run_dir=run_dir, callbacks=[monitor, *callbacks], **settings)
    finally:
        monitor.finish()
    finished = Run(name, monitor, result, result.config)
    if generation_limit:
        finished.generation = _generation_before_after(result.adapter_dir, run_dir, generation_limit)
    (lab / f"{name}.summary.json").write_text(json.dumps(finished.summary(), indent=2, default=str))
    return finished


def _generation_before_after(adapter_dir, run_dir, limit: int) -> dict:
    """Generation metrics of the trained model and, for an adapter, of the base model (adapter off)."""
    model, tokenizer = runs.load(adapter_dir)
    after = generation_metrics(model, tokenizer, run_dir, limit=limit, max_new_tokens=32)
    out = {k: after[k] for k in ("persona_score", "rouge_l", "bleu")}
    if hasattr(model, "disable_adapter"):
        with model.disable_adapter():
            before = generation_metrics(model, tokenizer, run_dir, limit=limit, max_new_tokens=32)
        out |= {f"{k}_before": before[k] for k in ("persona_score", "rouge_l", "bleu")}
    return out


def generation_metrics(model, tokenizer, run_dir=None, limit: int = 8, max_new_tokens: int = 40) -> dict:
    """Beside the loss, what the answers look like: persona score and ROUGE-L / BLEU.

    The persona score asks LIMIT held-out persona questions (a keyword must appear); ROUGE-L and
    BLEU compare answers to LIMIT validation questions with their reference answers (wording
    overlap: useful to follow during training, blind to meaning, so never the only judge).
    """
    items = evaluate.load_eval_set("persona")[:limit]
    rows = data.load_split(data.ensure_dataset(run_dir))["validation"].select(range(limit))
    questions = [m["messages"][0]["content"] for m in rows]
    references = [next(t["content"] for t in m["messages"] if t["role"] == "assistant") for m in rows]
    was_training = model.training
    model.eval()
    try:  # both sets in one batch: on a CPU a decoding step costs about the same for 8 answers as for 16
        both = evaluate.generate(model, tokenizer, [i["question"] for i in items] + questions, max_new_tokens,
                                 progress=False)
    finally:
        model.train(was_training)
    persona, answers = evaluate.score_answers("persona", items, both[:len(items)]), both[len(items):]
    return {"persona_score": persona.score,
            "rouge_l": round(statistics.fmean(evaluate.rouge_l(a, r) for a, r in zip(answers, references)), 4),
            "bleu": round(evaluate.bleu(answers, references), 4),
            "examples": [{"question": q, "answer": a, "reference": r}
                         for q, a, r in list(zip(questions, answers, references))[:3]]}

