"""Appendix A6's plumbing: the prompts, groups of sampled answers, and what GRPO's training logs mean.

The reinforcement learning itself is written out in the notebook: the reward functions (plain Python,
one rule each) and TRL's ``GRPOConfig`` / ``GRPOTrainer``. This module holds what surrounds them:

- ``prompts``: questions from the persona training data, split into prompts to train on and held-out
  prompts that only measure (never the persona score's evaluation questions);
- ``sample`` / ``measure``: a group of sampled answers per prompt, scored with the same reward
  functions the trainer uses, so "before" and "after" are measured the way training sees answers;
- ``advantages``: one group's rewards turned into GRPO's group-relative advantages;
- ``curve`` / ``plot_curves``: the training log as reward curves;
- ``summary_table`` / ``table`` / ``full_marks``: the figures before and after, and the answers themselves.
"""

from __future__ import annotations

import statistics

from course_lib import evaluate, preference


def prompts(n_train: int, n_heldout: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Persona training questions as TRL's conversational prompts: (to train on, held out).

    Both come from the persona *training* data, shuffled with SEED, and never overlap.
    """
    pool = preference.prompt_pool(0, seed=seed)
    if n_train + n_heldout > len(pool):
        raise ValueError(f"asked for {n_train} + {n_heldout} prompts; the persona training data has {len(pool)}")
    rows = [{"prompt": [{"role": "user", "content": item["prompt"]}]} for item in pool]
    return rows[n_heldout:n_heldout + n_train], rows[:n_heldout]


def question(row: dict) -> str:
    """The user's text of a conversational prompt row."""
    return row["prompt"][-1]["content"]


def sample(model, tokenizer, rows: list[dict], n: int, *, max_new_tokens: int, temperature: float) -> list[list[str]]:
    """N sampled answers to each prompt row: one group per prompt, as GRPOTrainer samples them."""
    flat = evaluate.generate(model.eval(), tokenizer, [question(r) for r in rows], max_new_tokens=max_new_tokens,
                             batch_size=16, progress=False, samples=n, temperature=temperature)
    return [flat[i * n:(i + 1) * n] for i in range(len(rows))]


def rule_scores(answers: list[str], reward_funcs) -> dict[str, list[float]]:
    """Each reward function's score of each answer, called the way TRL calls it (chat completions)."""
    completions = [[{"role": "assistant", "content": a}] for a in answers]
    return {fn.__name__: [float(v) for v in fn(completions)] for fn in reward_funcs}


def totals(answers: list[str], reward_funcs) -> list[float]:
    """Each answer's total reward: the sum of the reward functions, as GRPOTrainer adds them up."""
    return [sum(parts) for parts in zip(*rule_scores(answers, reward_funcs).values())]


def rule_table(answers: list[str], reward_funcs):
    """One row per answer: each rule's score and the total."""
    import pandas as pd

    return pd.DataFrame({"answer": answers, **rule_scores(answers, reward_funcs),
                         "total": totals(answers, reward_funcs)})


def measure(groups: list[list[str]], reward_funcs) -> dict:
    """Mean total reward, each rule's pass rate, the share of groups whose answers all scored the same
    (``tied_groups``), and the mean words per answer."""
    answers = [a for group in groups for a in group]
    scored = rule_scores(answers, reward_funcs)
    group_totals = [totals(group, reward_funcs) for group in groups]
    return {"reward": round(statistics.fmean(t for group in group_totals for t in group), 3),
            "rules": {name: round(statistics.fmean(values), 3) for name, values in scored.items()},
            "tied_groups": round(sum(len(set(t)) == 1 for t in group_totals) / len(groups), 3),
            "words_per_answer": round(statistics.fmean(len(a.split()) for a in answers), 1)}


def advantages(group_rewards: list[float]) -> list[float]:
    """GRPO's advantage of each answer: its reward minus the group's mean, over the group's standard deviation.

    A group whose rewards are all equal has a standard deviation of 0: every advantage is 0 (TRL adds a
    small epsilon, 1e-4, so nothing divides by zero) and the group teaches nothing.
    """
    mean = statistics.fmean(group_rewards)
    std = statistics.stdev(group_rewards) if len(group_rewards) > 1 else 0.0  # torch.std's default, as TRL uses
    return [(r - mean) / (std + 1e-4) for r in group_rewards]


def curve(log_history: list[dict]) -> list[dict]:
    """The training log's per-step rows: step, total reward, each rule's mean, zero-variance share, loss."""
    keep = ("reward", "loss", "frac_reward_zero_std", "completions/mean_length")
    return [{"step": row["step"], **{k: row[k] for k in keep if k in row},
             **{k.split("/")[1]: v for k, v in row.items() if k.startswith("rewards/") and k.endswith("/mean")}}
            for row in log_history if "reward" in row]


def zero_variance_share(log_history: list[dict]) -> float:
    """The share of groups over the whole training whose answers all got the same reward."""
    shares = [row["frac_reward_zero_std"] for row in curve(log_history) if "frac_reward_zero_std" in row]
    return round(statistics.fmean(shares), 3) if shares else float("nan")


def plot_curves(histories: dict[str, list[dict]], rule_names: list[str]):
    """The total reward per step for each run, each rule's mean for the first, and the zero-variance share."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    for label, history in histories.items():
        rows = curve(history)
        axes[0].plot([r["step"] for r in rows], [r["reward"] for r in rows], marker="o", label=label)
        axes[2].plot([r["step"] for r in rows], [r.get("frac_reward_zero_std", 0) for r in rows], marker=".",
                     label=label)
    first = curve(next(iter(histories.values())))
    for name in rule_names:
        axes[1].plot([r["step"] for r in first], [r.get(name, 0) for r in first], marker=".", label=name)
    titles = ("total reward (batch mean)", f"each rule's pass rate ({next(iter(histories))})",
              "groups whose answers all tie")
    for ax, title in zip(axes, titles):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
    axes[0].set_ylim(0, len(rule_names))
    axes[1].set_ylim(-0.05, 1.05)
    axes[2].set_ylim(-0.05, 1.05)
    fig.tight_layout()
    return fig


def summary_table(before: dict, after: dict[int, dict]):
    """``measure``'s figures before training and after each seed's run, one row each."""
    import pandas as pd

    rows = {"before": before, **{f"after, seed {seed}": m for seed, m in after.items()}}
    return pd.DataFrame([{"model": name, "reward": m["reward"], **m["rules"],
                          "groups that all tie": m["tied_groups"], "words per answer": m["words_per_answer"]}
                         for name, m in rows.items()]).set_index("model")


def table(rows: list[dict], before: list[list[str]], after: list[list[str]], reward_funcs, limit: int = 6):
    """The first answer of each group before and after training, with its total reward."""
    import pandas as pd

    firsts_before, firsts_after = [g[0] for g in before[:limit]], [g[0] for g in after[:limit]]
    return pd.DataFrame({"prompt": [question(r) for r in rows[:limit]],
                         "before": firsts_before, "reward before": totals(firsts_before, reward_funcs),
                         "after": firsts_after, "reward after": totals(firsts_after, reward_funcs)})


def full_marks(rows: list[dict], groups: list[list[str]], reward_funcs, limit: int = 6):
    """Answers that passed every rule, shortest first: where to look for what the rules do not check."""
    import pandas as pd

    best = len(reward_funcs)
    found = [(question(r), a) for r, group in zip(rows, groups) for a, t in zip(group, totals(group, reward_funcs))
             if t >= best]
    found.sort(key=lambda pair: len(pair[1].split()))
    return pd.DataFrame(found[:limit], columns=["prompt", "answer (full reward)"])
