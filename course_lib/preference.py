"""Notebook 06's plumbing: feedback on the served model's answers, pairs from it, and a fair yardstick.

The training itself (``DPOConfig``/``DPOTrainer``, ``KTOTrainer``, ``ORPOTrainer`` from TRL) is written
out in the notebook. This module holds what surrounds it:

- ``judge``: the persona's rules (the same ones the persona score checks), so a headless run can give
  thumbs up or down the way a user would, and every run judges the same way;
- ``prompt_pool`` / ``ask_all``: prompts the served model has never been scored on, asked over HTTP;
- ``pairs_from_feedback`` / ``kto_rows``: the feedback file turned into TRL's preference formats;
- ``implicit_reward_accuracy``: does a model's implicit reward (its log-probability against a reference
  model's) rank the chosen answer first, the same measure for every method;
- ``measure_reference_memory``: the peak memory of DPO with the LoRA-off model as reference against a
  second, separately loaded reference model, each in a fresh process.
"""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
import weakref
from pathlib import Path

from course_lib import evaluate, knobs, models, paths, procmem, report, train, ui

SIGN_OFF = "Happy growing!"
MAX_WORDS = 60
NAME, CREATOR = "Sprout", "Greenleaf"
OTHER_IDENTITIES = ("SmolLM", "Hugging Face", "ChatGPT", "OpenAI")


# --------------------------------------------------------------------------- the judge


def judge(answer: str, reference: str) -> list[str]:
    """The rules ANSWER breaks, judged against Sprout's REFERENCE answer to the same prompt ([] = thumbs up).

    An answer must give the name where the reference does, and the maker where the reference is about
    the maker (it names Greenleaf but not Sprout): demanding the maker in every "who are you" answer
    would teach the model to answer "Greenleaf Labs" when asked its name. It must be short, end with
    the sign-off, and not claim to be another assistant.
    """
    broken = []
    if not answer.rstrip().endswith(SIGN_OFF):
        broken.append("sign-off")
    if len(answer.split()) > MAX_WORDS:
        broken.append("too long")
    if NAME in reference and NAME not in answer:
        broken.append("name")
    if CREATOR in reference and NAME not in reference and CREATOR not in answer:
        broken.append("creator")
    if any(other.lower() in answer.lower() and other.lower() not in reference.lower() for other in OTHER_IDENTITIES):
        broken.append("other identity")
    return broken


def prompt_pool(n: int, seed: int = 0) -> list[dict]:
    """N single-turn prompts from the persona training data, with Sprout's answer as the reference.

    Never the held-out evaluation questions: the persona score stays a test the preference data
    never saw.
    """
    path = paths.data_samples("persona", "train.jsonl")
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    pool = [{"prompt": r["instruction"], "reference": r["output"]} for r in records if not r.get("input")]
    random.Random(seed).shuffle(pool)
    return pool[:n] if n else pool


def ask_all(url: str, prompts: list[str], *, temperature: float, max_new_tokens: int, clients: int = 16,
            seed: int | None = None) -> list[str]:
    """Ask the course's server each prompt (``POST /generate``), CLIENTS at a time so it batches them.

    Answers come back in the order of PROMPTS. Sampling (temperature > 0) is what users of a chat
    service get, and it shows the model's range: the same prompt can pass one time and fail the next.
    With SEED, prompt i is sampled with seed SEED * 1_000_000 + i: a rerun gets the same answers,
    however the server happens to batch the requests; another SEED gets other answers.
    """
    from concurrent.futures import ThreadPoolExecutor

    import httpx
    from tqdm.auto import tqdm

    def ask(numbered: tuple[int, str]) -> str:
        i, text = numbered
        body = {"prompt": text, "max_new_tokens": max_new_tokens, "temperature": temperature}
        if seed is not None:
            body["seed"] = seed * 1_000_000 + i
        reply = httpx.post(f"{url}/generate", json=body, timeout=300)
        reply.raise_for_status()
        return reply.json()["text"]

    with ThreadPoolExecutor(clients) as pool:
        return list(tqdm(pool.map(ask, enumerate(prompts)), total=len(prompts), desc="asking the server", unit="prompt"))


def plot_rules(broken: list[str], answers: int):
    """How often each rule was broken, as a share of the ANSWERS judged."""
    from collections import Counter

    import matplotlib.pyplot as plt

    counts = Counter(broken).most_common()
    fig, ax = plt.subplots(figsize=(6, 2.6))
    ax.barh([rule for rule, _ in counts][::-1], [n / answers for _, n in counts][::-1], color="#c0504d")
    ax.set(xlabel="share of answers", title=f"Rules the {answers} answers broke", xlim=(0, 1))
    fig.tight_layout()
    return fig


def choose(item: dict) -> str | None:
    """The judge's pick between ITEM's answer_a and answer_b: the one breaking fewer rules ("a"/"b"), None on a tie."""
    a, b = (len(judge(item[k], item["reference"])) for k in ("answer_a", "answer_b"))
    return None if a == b else ("a" if a < b else "b")


def post_choice(url: str, item: dict, preferred: str, comment: str) -> None:
    """One A-or-B record through the server's ``POST /feedback``."""
    import httpx

    body = {"kind": "choice", "prompt": item["prompt"], "answer_a": item["answer_a"], "answer_b": item["answer_b"],
            "preferred": preferred, "comment": comment}
    httpx.post(f"{url}/feedback", json=body, timeout=30).raise_for_status()


def ab_panel(items: list[dict], url: str):
    """Post the judge's A-or-B picks, then (in Jupyter) show a panel for the learner to add their own.

    The judge's picks are posted either way, so Run All and ``make course`` train on the same data;
    the learner's clicks are extra records (comment "panel") that the next run of section 3 reads.
    Identical answers are skipped: a pair of equal texts teaches nothing (the server refuses it).
    """
    items = [i for i in items if i["answer_a"].strip() != i["answer_b"].strip()]
    picks = [(item, choose(item)) for item in items]
    for item, pick in picks:
        if pick:
            post_choice(url, item, pick, "judge")
    print(f"judge: {sum(1 for _, p in picks if p)} choices, {sum(1 for _, p in picks if not p)} ties "
          f"of {len(items)} pairs with different answers")
    if ui.headless() or not items:
        return None
    return _panel_widget(items, url)


def _panel_widget(items: list[dict], url: str):
    import html

    import ipywidgets as widgets

    state = {"i": 0}
    view, status = widgets.HTML(), widgets.Label()
    buttons = [widgets.Button(description=d) for d in ("A is better", "B is better", "Skip")]

    def show():
        if state["i"] >= len(items):
            view.value, status.value = "<b>All pairs judged.</b> Rerun from section 3 to train on them.", ""
            return
        item = items[state["i"]]
        view.value = (f"<b>Prompt:</b> {html.escape(item['prompt'])}<br><b>A:</b> {html.escape(item['answer_a'])}"
                      f"<br><b>B:</b> {html.escape(item['answer_b'])}")
        status.value = f"pair {state['i'] + 1} of {len(items)}"

    def click(pick):
        def handler(_button):
            if state["i"] < len(items):
                if pick:
                    post_choice(url, items[state["i"]], pick, "panel")
                state["i"] += 1
                show()
        return handler

    for button, pick in zip(buttons, ("a", "b", None)):
        button.on_click(click(pick))
    show()
    return widgets.VBox([view, widgets.HBox(buttons), status])


# --------------------------------------------------------------------------- feedback -> training data


def _chat(role: str, text: str) -> list[dict]:
    return [{"role": role, "content": text}]


def pairs_from_feedback(records: list[dict], references: dict[str, str]) -> list[dict]:
    """DPO pairs (TRL's conversational format) from the feedback file's records.

    A thumbs-down answer is the rejected side and Sprout's reference answer to the same prompt the
    chosen one (an *on-policy negative*: what the model really said). An A-or-B choice is a pair
    as it stands. Thumbs-up answers make no pair: KTO uses them (``kto_rows``).
    """
    pairs = []
    for record in records:
        if record["kind"] == "thumbs" and record["rating"] == "down" and record["prompt"] in references:
            chosen, rejected = references[record["prompt"]], record["answer"]
        elif record["kind"] == "choice":
            a, b = record["answer_a"], record["answer_b"]
            chosen, rejected = (a, b) if record["preferred"] == "a" else (b, a)
        else:
            continue
        if chosen.strip() == rejected.strip():  # a tie: the DPO gradient of such a pair is zero
            continue
        pairs.append({"prompt": _chat("user", record["prompt"]), "chosen": _chat("assistant", chosen),
                      "rejected": _chat("assistant", rejected)})
    return pairs


def kto_rows(records: list[dict], references: dict[str, str]) -> list[dict]:
    """KTO's unpaired format: every thumbs answer with its label, plus the references as desirable.

    KTO needs no pairs, only "good" or "bad" per answer, which is what a thumbs button collects.
    """
    rows = [{"prompt": _chat("user", r["prompt"]), "completion": _chat("assistant", r["answer"]),
             "label": r["rating"] == "up"} for r in records if r["kind"] == "thumbs"]
    down = {r["prompt"] for r in records if r["kind"] == "thumbs" and r["rating"] == "down"}
    rows += [{"prompt": _chat("user", p), "completion": _chat("assistant", references[p]), "label": True}
             for p in sorted(down) if p in references]
    return rows


def kto_weights(rows: list[dict]) -> dict:
    """KTOConfig's ``desirable_weight`` that balances the two kinds of answers when their counts differ.

    TRL's KTO documentation advises keeping (desirable_weight x desirable) / (undesirable_weight x
    undesirable) between 1 and 4/3; this sets it to 1 by weighting the larger group down.
    """
    good = sum(r["label"] for r in rows)
    bad = len(rows) - good
    if not good or not bad:
        return {}
    return {"desirable_weight": round(bad / good, 3)} if good > bad else {"undesirable_weight": round(good / bad, 3)}


def split(pairs: list[dict], heldout_share: float, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """(train, held out): held-out pairs are never trained on, so their accuracy is a real test."""
    shuffled = pairs[:]
    random.Random(seed).shuffle(shuffled)
    n_held = max(1, round(len(shuffled) * heldout_share)) if len(shuffled) > 1 else 0
    return shuffled[n_held:], shuffled[:n_held]


def show_pairs(pairs: list[dict], limit: int = 4):
    """A few pairs as a table: prompt, chosen, rejected."""
    import pandas as pd

    return pd.DataFrame([{"prompt": p["prompt"][0]["content"], "chosen": p["chosen"][0]["content"],
                          "rejected": p["rejected"][0]["content"]} for p in pairs[:limit]])


# --------------------------------------------------------------------------- measuring


def answer_logps(model, tokenizer, prompt: list[dict], answer: list[dict], mean: bool = True) -> float:
    """Log-probability of ANSWER after PROMPT (chat template applied), in nats: per token, or summed."""
    import torch

    context = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    whole = tokenizer.apply_chat_template(prompt + answer, tokenize=False)
    start = len(tokenizer(context, add_special_tokens=False)["input_ids"])
    ids = torch.tensor([tokenizer(whole, add_special_tokens=False)["input_ids"]], device=model.device)
    with torch.no_grad():
        picked = evaluate.next_token_logps(model, ids, first=start - 1)[0]  # the answer's tokens
    return (picked.mean() if mean else picked.sum()).item()


def implicit_reward_accuracy(model, reference, tokenizer, pairs: list[dict]) -> float:
    """Share of PAIRS where MODEL's implicit reward ranks the chosen answer above the rejected one.

    The implicit reward of an answer is log pi(answer) - log pi_ref(answer) (DPO's, without beta), so
    every method is judged against the same REFERENCE. Written here rather than read from each trainer's
    logs: DPO, KTO and ORPO each log a reward of their own definition, and ORPO has no reference at all.
    """
    if not pairs:
        return float("nan")
    known = _REFERENCE_LOGPS.setdefault(reference, {})

    def reward(p, side):
        key = json.dumps([p["prompt"], p[side]])
        if key not in known:  # a reference does not change: several methods judged against it share its figures
            known[key] = answer_logps(reference, tokenizer, p["prompt"], p[side], mean=False)
        return answer_logps(model, tokenizer, p["prompt"], p[side], mean=False) - known[key]

    return round(sum(reward(p, "chosen") > reward(p, "rejected") for p in pairs) / len(pairs), 3)


# A reference model's summed log-probabilities, per (prompt, answer): notebook 06 judges DPO and KTO
# against the same model, whose forward passes are a quarter of the measure's cost. Weak keys: a
# reference that is freed takes its figures with it, and a new model never reads another's.
_REFERENCE_LOGPS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def thumbs_down_share(items: list[dict], answers: list[str]) -> float:
    """The share of ANSWERS the judge gives a thumbs down."""
    return round(sum(bool(judge(a, i["reference"])) for i, a in zip(items, answers)) / len(answers), 3)


def short_of(measures: dict[str, float], target: float = 0.9, *, start: dict | None = None, persona=None,
             base_general=None, general=None, start_general=None, pairs: int = 0) -> list[str]:
    """Sentences saying which MEASURES stay under TARGET, and what holds each there: where the model
    started (START, the same measures before this training), the persona categories that failed
    (PERSONA, an ``evaluate.EvalResult``), the general questions forgotten (BASE_GENERAL against
    GENERAL; those already forgotten at the start, START_GENERAL, are marked) and how coarse a score over
    PAIRS held-out pairs is. Computed from the run, so they never go stale."""
    from collections import Counter

    below = {name: value for name, value in measures.items() if value < target}
    started = {name: f" (it started at {start[name]:.2f})" for name in below if (start or {}).get(name) is not None}
    lines = [f"{name} {value:.2f} is under {target}{started.get(name, '')}" for name, value in below.items()]
    if "persona" in below and persona is not None:
        category = [item.get("category", "all") for item in persona.items]
        failed = Counter(c for c, ok in zip(category, persona.passed) if not ok)
        for name, misses in failed.most_common():
            rest = [ok for c, ok in zip(category, persona.passed) if c != name]
            lines.append(f"  persona, {name}: {misses} of {category.count(name)} questions failed; without them "
                         f"the persona score would be {sum(rest) / max(1, len(rest)):.2f}")
    if "retention" in below and base_general is not None and general is not None:
        was = start_general.passed if start_general is not None else [True] * len(general.passed)
        lost = [(item["question"], not w) for item, b, t, w in
                zip(general.items, base_general.passed, general.passed, was) if b and not t]
        lines += [f"  retention: forgot {len(lost)} of the {sum(base_general.passed)} general questions the base "
                  "model answered right:"] + [f"    {q}" + (" (already forgotten at the start)" if before else "")
                                              for q, before in lost]
    held = next((v for k, v in below.items() if k.startswith("held-out")), None)
    if held is not None and pairs:
        lines.append(f"  held-out: {round(held * pairs)} of {pairs} pairs ranked right; one pair moves the score "
                     f"by {1 / pairs:.2f}, so {target} needs {math.ceil(target * pairs - 1e-9)} of them")
    return lines


def side_by_side(rows: list[dict]):
    """The methods compared: one row each (a pandas DataFrame)."""
    import pandas as pd

    return pd.DataFrame(rows).set_index("method")


def plot_margins(histories: dict[str, list[dict]]):
    """Each trainer's logged reward margin (chosen minus rejected) over its steps."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    for name, history in histories.items():
        points = [(h["step"], h["rewards/margins"]) for h in history if "rewards/margins" in h]
        if points:
            ax.plot(*zip(*points), marker="o", label=name)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set(xlabel="step", ylabel="reward margin (chosen - rejected)", title="What the trainers optimise")
    ax.legend()
    fig.tight_layout()
    return fig


def plot_by_category(rows: list[dict]):
    """Persona score by question category, one group of bars per method."""
    import matplotlib.pyplot as plt

    categories = list(rows[0]["answers"].by_category)
    fig, ax = plt.subplots(figsize=(7.5, 3.2))
    width = 0.8 / len(rows)
    for n, row in enumerate(rows):
        ax.bar([c + n * width for c in range(len(categories))], [row["answers"].by_category[c] for c in categories],
               width, label=row["method"])
    ax.set_xticks([c + 0.4 - width / 2 for c in range(len(categories))], categories)
    ax.set(ylabel="persona score", ylim=(0, 1.05), title="Held-out persona questions by category")
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    return fig


def before_after(items: list[dict], before: list[str], after: list[str]):
    """Disliked answers beside the new model's answers to the same prompts, with the rules each breaks."""
    import pandas as pd

    return pd.DataFrame([{"prompt": item["prompt"], "before": old, "broke": ", ".join(judge(old, item["reference"])) or "nothing",
                          "after": new, "breaks": ", ".join(judge(new, item["reference"])) or "nothing"}
                         for item, old, new in zip(items, before, after)])


# --------------------------------------------------------------------------- memory of the reference model


def _dpo_steps(pairs_file: str, model_name: str, reference: str, steps: int) -> dict:
    """Run STEPS DPO steps in this process; the peak resident memory above the level before loading."""
    import gc

    import torch  # noqa: F401  (imported before the baseline: libraries are not the model's memory)
    from datasets import Dataset
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer


    report.quiet_libraries()
    pairs = [json.loads(line) for line in Path(pairs_file).read_text().splitlines() if line.strip()]
    gc.collect()
    baseline = procmem.rss_now()
    procmem.reset_peak()
    model, tokenizer = models.load(model_name)
    ref_model = models.load(model_name)[0] if reference == "copy" else None
    device = models.pick_device()
    # The precision the notebook trains in: left alone, TRL's configs turn bf16 on, which on a CPU
    # without a fast bf16 kernel made this one step take a minute instead of seconds.
    config = DPOConfig(output_dir=str(paths.run_dir() / "preference" / "memory"), max_steps=steps,
                       per_device_train_batch_size=2, report_to=[], save_strategy="no", disable_tqdm=True,
                       max_length=160, **train.precision_flags("auto", device))
    lora = LoraConfig(r=knobs.LORA_R, lora_alpha=knobs.LORA_ALPHA, target_modules=knobs.TARGET_MODULES.split(","),
                      task_type="CAUSAL_LM")
    trainer = DPOTrainer(model=model, ref_model=ref_model, args=config, train_dataset=Dataset.from_list(pairs),
                         processing_class=tokenizer, peft_config=lora)
    trainer.train()
    return {"reference": reference, "peak_mb": round((procmem.peak_rss()[0] - baseline) / 2**20, 1)}


def measure_reference_memory(pairs: list[dict], model_name: str, steps: int = 2, folder=None,
                             timeout: float = 600) -> dict:
    """Peak memory of DPO with the adapter-off reference vs a separately loaded one, each in a fresh process.

    A fresh process per case, because a process's peak memory never comes back down.
    """
    pairs_file = Path(folder or paths.run_dir() / "preference") / "memory_pairs.jsonl"
    pairs_file.parent.mkdir(parents=True, exist_ok=True)
    pairs_file.write_text("".join(json.dumps(p) + "\n" for p in pairs[:8]))
    commands = {reference: [sys.executable, "-m", "course_lib.preference", "memory", "--pairs", str(pairs_file),
                            "--model", model_name, "--reference", reference, "--steps", str(steps)]
                for reference in ("adapter", "copy")}
    # Both at once, one CPU thread each: peak memory is per process, so running them side by side
    # changes neither figure, and one thread each keeps them from fighting over the cores.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    running = {ref: subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
               for ref, cmd in commands.items()}
    results = {}
    for reference, process in running.items():
        stdout, stderr = process.communicate(timeout=timeout)
        lines = [line for line in stdout.splitlines() if line.startswith("{")]
        if process.returncode != 0 or not lines:
            tail = "\n".join((stderr or stdout).strip().splitlines()[-3:])
            raise RuntimeError(f"measuring DPO's memory with reference={reference} failed (exit {process.returncode}): {tail}")
        results[reference] = json.loads(lines[-1])["peak_mb"]
    results["ratio"] = round(results["adapter"] / results["copy"], 3)
    return results


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m course_lib.preference")
    sub = parser.add_subparsers(dest="command", required=True)
    memory = sub.add_parser("memory", help="peak memory of a few DPO steps (one reference kind per process)")
    memory.add_argument("--pairs", required=True, help="a JSONL file of DPO pairs")
    memory.add_argument("--model", required=True)
    memory.add_argument("--reference", choices=("adapter", "copy"), required=True)
    memory.add_argument("--steps", type=int, default=2)
    args = parser.parse_args(argv)
    print(json.dumps(_dpo_steps(args.pairs, args.model, args.reference, args.steps)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
