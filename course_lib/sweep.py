"""Short LoRA runs that vary one thing: the rank r, or what the loss counts (answers only or every token).

Each run is ``train.train`` (the same path as notebook 02's main run and the command line), shorter,
then scored on a few held-out persona questions. They run in this process, one after another: they
report time and quality, not peak memory (for memory, ``compare.compare_methods`` uses fresh
processes).
"""

from __future__ import annotations

import math
import shutil

from course_lib import batches, data, evaluate, paths, runs, train, ui


def short_run(run_dir, name: str, questions: int, **settings) -> dict:
    """Train NAME with SETTINGS (TrainConfig fields), then score it on QUESTIONS persona questions."""
    run_dir = paths.run_dir(run_dir)
    out = run_dir / "sweep" / name
    shutil.rmtree(out, ignore_errors=True)  # scratch runs: replaced, not kept aside like a main run
    result = train.train(run_dir=run_dir, output_dir=str(out), save_every="no", quiet=True, **settings)
    with ui.quiet_progress():
        model, tokenizer = runs.load(result.adapter_dir)
    score = evaluate.evaluate(model, tokenizer, "persona", limit=questions).score
    return {"run": name, "lora_r": result.config["lora_r"], "trainable_params": result.trainable_params,
            "val_loss": result.val_loss, "persona_score": score, "steps": result.steps,
            "train_seconds": result.train_seconds, "adapter_dir": str(result.adapter_dir)}


def rank_sweep(ranks, run_dir=None, questions: int = 16, **settings) -> list[dict]:
    """One short run per LoRA rank, alpha = 2r each time (the main run's ratio), other knobs equal.

    Keeping alpha / r fixed keeps the size of the update's scale the same across ranks, so the
    sweep compares ranks, not learning rates (Hu et al., 2021, section 4.1).
    """
    from tqdm.auto import tqdm

    return [short_run(run_dir, f"r{r}", questions, lora_r=r, lora_alpha=2 * r, **settings)
            for r in tqdm(ranks, desc="rank sweep", unit="run")]


def split_losses(model, tokenizer, conversations: list[list[dict]]) -> dict:
    """Mean loss on the answer tokens and on the prompt tokens (system line + question) of CONVERSATIONS.

    What answer-only training changes: a model trained on every token also learns to predict
    the prompts, which the answer-only one never practised.
    """
    import torch

    sums = {"answer": [0.0, 0], "prompt": [0.0, 0]}
    model.eval()
    with torch.no_grad():
        for messages in conversations:
            example = batches.encode(messages, tokenizer)
            ids = torch.tensor([example["input_ids"]], device=model.device)
            logits = model(input_ids=ids).logits[0, :-1].float()
            losses = torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="none")
            for position, label in enumerate(example["labels"][1:]):
                part = sums["prompt" if label == batches.IGNORE else "answer"]
                part[0] += losses[position].item()
                part[1] += 1
    return {f"{k}_loss": round(total / count, 4) if count else math.nan for k, (total, count) in sums.items()}


def answer_only_ablation(run_dir=None, questions: int = 16, val_conversations: int = 24,
                         reuse: dict | None = None, **settings) -> list[dict]:
    """The same short run with the loss on answers only (the course's default) and on every token.

    Both are measured on the validation conversations' answer tokens and prompt tokens
    (``split_losses``) and on held-out persona questions. REUSE: a ``short_run`` row already
    trained with these SETTINGS and answer-only loss (the rank sweep's run at the same r), so that
    run is not trained twice.
    """
    if reuse and reuse["lora_r"] != settings.get("lora_r", reuse["lora_r"]):
        raise ValueError(f"reuse was trained with r = {reuse['lora_r']}, the ablation asks r = {settings['lora_r']}")
    split = data.load_split(data.ensure_dataset(run_dir))
    held_out = [row["messages"] for row in split["validation"]][:val_conversations]
    rows = []
    for answer_only in (True, False):
        name = "answers-only" if answer_only else "every-token"
        row = reuse if answer_only and reuse else short_run(run_dir, name, questions, answer_only=answer_only,
                                                             **settings)
        with ui.quiet_progress():
            model, tokenizer = runs.load(row["adapter_dir"])
        rows.append({"loss counts": "answers only" if answer_only else "every token",
                     "persona_score": row["persona_score"], **split_losses(model, tokenizer, held_out),
                     "steps": row["steps"]})
    return rows


def plot_rank_sweep(rows: list[dict]):
    """Trainable parameters, validation loss and persona score against the rank r (log scale)."""
    import matplotlib.pyplot as plt

    ranks = [row["lora_r"] for row in rows]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3))
    for ax, key, label in zip(axes, ("trainable_params", "val_loss", "persona_score"),
                              ("trainable parameters", "validation loss", "persona score")):
        ax.plot(ranks, [row[key] for row in rows], "o-")
        ax.set_xscale("log", base=2)
        ax.set_xticks(ranks, [str(r) for r in ranks])
        ax.set(xlabel="LoRA rank r", title=label)
    axes[0].set_yscale("log")
    axes[2].set_ylim(0, 1)
    fig.suptitle(f"rank sweep: {rows[0]['steps']} steps per run, alpha = 2r", y=1.02)
    fig.tight_layout()
    return fig

