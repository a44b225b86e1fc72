"""Continual learning: teach the persona new facts later without making it forget the old ones.

Sprout already has a LoRA adapter (notebook 02). Later, Greenleaf Labs wants it to know three new
facts (data_samples/persona/new_facts.jsonl). Each strategy starts from the same persona adapter,
trains on the new facts for the same number of steps, and is scored twice: on the old persona
questions (what it may have forgotten) and on the new-facts questions (what it learned).

- ``new_only``: keep training the same adapter on the new data only (the naive way);
- ``replay``: the same, with a share of the OLD persona examples mixed into every batch;
- ``new_adapter``: freeze the persona adapter and train a second LoRA adapter beside it (PEFT
  multi-adapter); both stay active at answer time, so their updates add up;
- ``freeze_lower``: keep training the same adapter, but only its LoRA matrices in the top layers.

``describe`` says in words which strategy forgot and learned the most, and ``plot_replay`` draws
the scores against the replay share, for the notebook's replay panel.
"""

from __future__ import annotations

import random
import time

from course_lib import batches, data, evaluate, paths, runs, train

STRATEGIES = ("new_only", "replay", "new_adapter", "freeze_lower")
PERSONA, NEW = "persona", "new_facts"  # the two adapters' names in the multi-adapter model


def chats(*parts: str) -> list[dict]:
    """The chat records of a shipped data file, e.g. ``chats("persona", "new_facts.jsonl")``."""
    loaded = data.load_records(paths.data_samples(*parts))
    if loaded.bad:
        raise ValueError(f"{parts[-1]}: {len(loaded.bad)} bad records, first: {loaded.bad[0]}")
    return [{"messages": r["messages"]} for r in loaded.records]


def old_data() -> list[dict]:
    return chats("persona", "train.jsonl")


def new_data() -> list[dict]:
    return chats("persona", "new_facts.jsonl")


def mix(new: list[dict], old: list[dict], share: float, seed: int = 0) -> list[dict]:
    """NEW plus enough OLD examples (drawn at random) that SHARE of the mix is old: replay."""
    if not 0 <= share < 1:
        raise ValueError(f"replay share must be in [0, 1), not {share}")
    wanted = min(len(old), round(share * len(new) / (1 - share)))
    return new + random.Random(seed).sample(old, wanted)


# --------------------------------------------------------------------------- training


def fit(model, tokenizer, records: list[dict], *, steps: int, batch_size: int, learning_rate: float,
        seed: int, out_dir, trainer_class=None, trained_logits_only: bool = True, **trainer_kwargs) -> list[dict]:
    """Train MODEL's trainable weights on RECORDS for STEPS steps; returns the log history.

    Unlike ``train.train`` (which reads the cleaned split of notebook 01 and loads a fresh model),
    this trains a model that is already in memory on any list of chats: what continual learning
    and distillation need. Same Trainer, same padding-free batches, same answer-only labels.
    """
    from datasets import Dataset

    if not records:
        raise ValueError("no training records: the data file is empty")
    tokenized = batches.tokenize(Dataset.from_list(records), tokenizer).shuffle(seed=seed)
    # A constant rate with no warm-up and no decay: the strategies differ only in what they train on.
    # fp32 everywhere, so the comparison never depends on the device's mixed precision.
    cfg = train.TrainConfig(max_steps=steps, batch_size=batch_size, learning_rate=learning_rate, scheduler="constant",
                            warmup=0.0, weight_decay=0.0, logging_steps=max(1, steps // 5), save_every="no",
                            seed=seed, precision="fp32")
    trainer = train.fit(model, tokenizer, tokenized, cfg, out_dir, trainer_class=trainer_class,
                        trained_logits_only=trained_logits_only, **trainer_kwargs)
    model.eval()
    return trainer.state.log_history


def load_persona(adapter_dir):
    """Base model + the persona adapter (named "persona"), trainable -> (model, tokenizer)."""
    return runs.load(adapter_dir, trainable=True, full_precision=True, adapter_name=PERSONA)


def add_second_adapter(model) -> None:
    """Freeze the persona adapter and put a fresh LoRA adapter beside it; both stay active.

    PEFT's ``add_adapter`` creates the new A·B matrices next to the old ones in every target layer;
    activating both (a list of names) makes each layer compute W·x + ΔW_persona·x + ΔW_new·x.
    Only the new matrices train, so the persona's own weights cannot change: what can still
    change old answers is the new update added on top of them.
    """
    config = model.peft_config[PERSONA]
    from peft import LoraConfig

    model.add_adapter(NEW, LoraConfig(task_type="CAUSAL_LM", r=config.r, lora_alpha=config.lora_alpha,
                                      lora_dropout=config.lora_dropout,
                                      target_modules=sorted(config.target_modules)))
    model.base_model.set_adapter([PERSONA, NEW])  # PeftModel.set_adapter takes one name; the tuner takes a list
    for name, param in model.named_parameters():
        param.requires_grad = f".{NEW}." in name and "lora_" in name


def freeze_lower_layers(model, keep_top: float = 0.5) -> int:
    """Only the LoRA weights of the top KEEP_TOP share of decoder layers train; returns how many layers.

    A claim common in fine-tuning tutorials, after Yosinski et al. (2014, "How transferable are
    features in deep neural networks?"): lower layers hold general features, upper layers
    task-specific ones, so updating only the top should disturb less of what the model already does.
    """
    layers = model.get_base_model().config.num_hidden_layers
    first = layers - max(1, round(layers * keep_top))
    for name, param in model.named_parameters():
        if "lora_" in name:
            index = int(name.split(".layers.")[1].split(".")[0])
            param.requires_grad = index >= first
    return layers - first


def trainable_count(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def run_strategy(strategy: str, adapter_dir, run_dir, *, steps: int = 18, batch_size: int = 8,
                 learning_rate: float = 2e-3, replay_share: float = 0.5, keep_top: float = 0.5,
                 seed: int = 0, eval_limit: int = 0, max_new_tokens: int = 48) -> dict:
    """Start from the persona adapter, learn the new facts with STRATEGY, score old and new."""
    from transformers import set_seed

    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, not {strategy!r}")
    set_seed(seed)
    model, tokenizer = load_persona(adapter_dir)
    records = new_data()
    if strategy == "replay":
        records = mix(records, old_data(), replay_share, seed)
    elif strategy == "new_adapter":
        add_second_adapter(model)
    elif strategy == "freeze_lower":
        freeze_lower_layers(model, keep_top)
    trainable = trainable_count(model)
    started = time.perf_counter()
    history = fit(model, tokenizer, records, steps=steps, batch_size=batch_size, learning_rate=learning_rate,
                  seed=seed, out_dir=paths.run_dir(run_dir) / "continual" / strategy)
    seconds = time.perf_counter() - started
    old, new = _old_and_new(model, tokenizer, eval_limit, max_new_tokens)
    return {"strategy": strategy, "old_score_after": old.score, "new_score_after": new.score,
            "trainable_params": trainable, "train_examples": len(records), "train_seconds": round(seconds, 1),
            "losses": [h["loss"] for h in history if "loss" in h], "old": old, "new": new}


def _old_and_new(model, tokenizer, eval_limit: int, max_new_tokens: int):
    """The persona questions (old) and the new facts, answered in shared batches."""
    scored = evaluate.evaluate_sets(model, tokenizer, ("persona", "new_facts"), max_new_tokens, eval_limit)
    return scored["persona"], scored["new_facts"]


def scores_before(adapter_dir, eval_limit: int = 0, max_new_tokens: int = 48) -> dict:
    """The persona model's scores before it learns anything new (the reference for forgetting)."""
    model, tokenizer = load_persona(adapter_dir)
    old, new = _old_and_new(model.eval(), tokenizer, eval_limit, max_new_tokens)
    return {"old_score_before": old.score, "new_score_before": new.score, "old": old, "new": new}


def compare(adapter_dir, run_dir, strategies=STRATEGIES, eval_limit: int = 0, max_new_tokens: int = 48,
            **settings) -> dict:
    """Run every strategy from the same starting adapter; {strategy: figures} plus "before"."""
    from tqdm.auto import tqdm

    before = scores_before(adapter_dir, eval_limit, max_new_tokens)
    results = {"before": before}
    for strategy in tqdm(strategies, desc="strategies", unit="strategy"):
        results[strategy] = run_strategy(strategy, adapter_dir, run_dir, eval_limit=eval_limit,
                                         max_new_tokens=max_new_tokens, **settings)
    return results


def figures(results: dict) -> dict:
    """The figures to record: per strategy old_score_before, old_score_after, new_score_after (+ derived)."""
    before = results["before"]
    out = {}
    for name, r in results.items():
        if name == "before":
            continue
        out[name] = {"old_score_before": before["old_score_before"], "old_score_after": r["old_score_after"],
                     "new_score_before": before["new_score_before"], "new_score_after": r["new_score_after"],
                     "forgetting": round(before["old_score_before"] - r["old_score_after"], 3),
                     "new_gain": round(r["new_score_after"] - before["new_score_before"], 3),
                     "trainable_params": r["trainable_params"], "train_examples": r["train_examples"],
                     "train_seconds": r["train_seconds"]}
    return out


def table(figs: dict):
    """One row per strategy: old score before/after, the drop, new score after, the gain (a DataFrame)."""
    import pandas as pd

    return pd.DataFrame(figs).T[["old_score_before", "old_score_after", "forgetting", "new_score_before",
                                 "new_score_after", "new_gain", "trainable_params", "train_examples",
                                 "train_seconds"]]


def plot(figs: dict):
    """Forgetting (drop of the old score) against learning (gain on the new facts), one point per strategy."""
    import matplotlib.pyplot as plt

    fig, (ax_trade, ax_bars) = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, f in figs.items():
        ax_trade.scatter(f["forgetting"], f["new_gain"], s=60)
        ax_trade.annotate(name, (f["forgetting"], f["new_gain"]), textcoords="offset points", xytext=(5, 5))
    ax_trade.axvline(0, color="grey", lw=0.8)
    ax_trade.set(xlabel="forgetting: drop of the old persona score", ylabel="gain on the new facts",
                 title="trade-off (best: top left)")
    names = list(figs)
    x = range(len(names))
    ax_bars.bar([i - 0.2 for i in x], [figs[n]["old_score_after"] for n in names], 0.4, label="old score after")
    ax_bars.bar([i + 0.2 for i in x], [figs[n]["new_score_after"] for n in names], 0.4, label="new score after")
    ax_bars.axhline(next(iter(figs.values()))["old_score_before"], color="tab:blue", ls="--", lw=1,
                    label="old score before")
    ax_bars.set_xticks(list(x), names, rotation=15)
    ax_bars.set(ylim=(0, 1.05), title="scores after learning the new facts")
    ax_bars.legend(fontsize=8)
    fig.tight_layout()
    return fig


def describe(figs: dict) -> str:
    """Which strategies forgot the most and the least, and which learned the most, in words (ties named together)."""
    def line(what: str, key: str, best: float, measure: str, before: str, after: str) -> str:
        names = [n for n in figs if figs[n][key] == best]
        f = figs[names[0]]
        return f"{what}: {', '.join(names)} ({measure} {f[before]:.3f} -> {f[after]:.3f})"

    forgetting = [f["forgetting"] for f in figs.values()]
    gains = [f["new_gain"] for f in figs.values()]
    old = ("old persona score", "old_score_before", "old_score_after")
    new = ("new-facts score", "new_score_before", "new_score_after")
    if max(forgetting) == min(forgetting):
        lines = [line("forgot the same", "forgetting", max(forgetting), *old)]
    else:
        lines = [line("forgot the most", "forgetting", max(forgetting), *old),
                 line("forgot the least", "forgetting", min(forgetting), *old)]
    what = "learned the same" if max(gains) == min(gains) else "learned the most"
    return "\n".join([*lines, line(what, "new_gain", max(gains), *new)])


def plot_replay(replay_runs: dict, old_score_before: float, new_score_before: float):
    """Old and new scores after training against the replay share, one point per share tried (REPLAY_RUNS)."""
    import matplotlib.pyplot as plt

    shares = sorted(replay_runs)
    fig, ax = plt.subplots(figsize=(6, 3.4))
    ax.plot(shares, [replay_runs[s]["old_score_after"] for s in shares], "o-", label="old persona score after")
    ax.plot(shares, [replay_runs[s]["new_score_after"] for s in shares], "s-", label="new-facts score after")
    ax.axhline(old_score_before, color="tab:blue", ls="--", lw=1, label="old persona score before")
    ax.axhline(new_score_before, color="tab:orange", ls=":", lw=1, label="new-facts score before")
    ax.set(xlabel="replay share (old examples in the training mix)", ylabel="score", xlim=(-0.05, 0.95),
           ylim=(0, 1.05), title="how much replay is enough?")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
