"""Where a base model comes from: a tokenizer and a small Llama trained from scratch, then taught to chat.

A model like the course's default one is made in three stages; appendix A1 runs the first two in
miniature:
1. **pretraining**: next-token prediction on raw text, here English prose from Python's own
   standard-library docstrings (``data_samples/pretrain``, built offline by
   ``data_samples/tools/make_pretrain_corpus.py``);
2. **instruction tuning**: the same loss on ChatML conversations, counted on the answers only;
3. **personalization** with LoRA: the main course.

The notebook builds the model itself (``LlamaConfig``, ``LlamaForCausalLM``) and writes the training
step with plain PyTorch calls (forward, loss, backward,
clip, optimizer step, schedule step, zero the gradients), and passes it in: ``plan_steps`` times
that step, ``pretrain`` and ``instruction_tune`` are the loops around it (draw a batch, call the
step, measure at checkpoints). The notebook does not use the Trainer on purpose: notebook 02
teaches the Trainer, and training from scratch is where a learner should see every step once.

Perplexities of models with different tokenizers are not comparable (a tokenizer with longer
tokens has fewer, harder predictions), so the comparison with the default model also reports
**bits per byte**: the same text's total surprise divided by its length in bytes.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from course_lib import batches, paths
from course_lib.models import count_parameters

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# ChatML, the format of the default model (without its default system prompt).
CHATML = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


# --------------------------------------------------------------------------- corpus and tokenizer


def load_corpus(folder=None, max_chars: int | None = None) -> tuple[str, str]:
    """(training text, held-out text) from ``data_samples/pretrain``; one paragraph per line."""
    folder = Path(folder) if folder else paths.data_samples("pretrain")
    texts = []
    for name in ("train.txt", "val.txt"):
        path = folder / name
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: rebuild it with "
                                    "`python data_samples/tools/make_pretrain_corpus.py`")
        text = path.read_text(encoding="utf-8")
        if not text.strip():
            raise ValueError(f"{path} is empty: there is nothing to pretrain on")
        texts.append(text[:max_chars] if max_chars else text)
    return texts[0], texts[1]


def train_tokenizer(text: str, vocab_size: int = 4096):
    """A byte-level BPE tokenizer (GPT-2 style) trained on TEXT, with ChatML's special tokens.

    Byte-level means every string can be encoded (no unknown token): the 256 bytes are the base
    alphabet and BPE merges the most frequent pairs until the vocabulary is full.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(text.splitlines(), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", unk_token=None)
    fast.chat_template = CHATML
    return fast


def blocks(tokenizer, text: str, seq_len: int = 128):
    """TEXT -> a tensor [n, seq_len] of token ids; paragraphs joined with <|endoftext|> (no padding)."""
    import torch

    ids: list[int] = []
    for line in text.splitlines():
        if line.strip():
            ids += tokenizer(line, add_special_tokens=False)["input_ids"] + [tokenizer.bos_token_id]
    n = len(ids) // seq_len
    if n == 0:
        raise ValueError(f"only {len(ids)} tokens: not one block of {seq_len}")
    return torch.tensor(ids[: n * seq_len]).view(n, seq_len)


# --------------------------------------------------------------------------- measuring


def total_nll(model, token_blocks, batch_size: int = 16) -> tuple[float, int]:
    """Summed next-token negative log-likelihood (nats) over TOKEN_BLOCKS and the number of predictions."""
    import torch

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(token_blocks), batch_size):
            batch = token_blocks[start:start + batch_size].to(model.device)
            loss = model(input_ids=batch, labels=batch).loss  # mean over batch x (seq_len - 1)
            n = batch.shape[0] * (batch.shape[1] - 1)
            total, count = total + loss.item() * n, count + n
    return total, count


def perplexity_on_blocks(model, token_blocks, batch_size: int = 16) -> float:
    """exp(mean loss) of MODEL over TOKEN_BLOCKS (``blocks``): 'as unsure as a uniform pick among this many tokens'."""
    total, count = total_nll(model, token_blocks, batch_size)
    return math.exp(total / count)


def bits_per_byte(model, tokenizer, text: str, seq_len: int = 128, batch_size: int = 8) -> float:
    """Surprise per byte of TEXT: comparable between models whose tokenizers differ."""
    token_blocks = blocks(tokenizer, text, seq_len)
    total, count = total_nll(model, token_blocks, batch_size)
    # Only predicted tokens count: the share of text they cover, in bytes.
    covered = tokenizer.decode(token_blocks.flatten().tolist())
    share = count / token_blocks.numel()
    return total / math.log(2) / (len(covered.encode("utf-8")) * share)


def sample(model, tokenizer, prompts: list[str], max_new_tokens: int = 24, seed: int = 0) -> list[str]:
    """Continuations of PROMPTS, sampled (temperature 0.8, top-k 40) with a fixed seed."""
    import torch

    model.eval()
    out = []
    for prompt in prompts:
        torch.manual_seed(seed)
        ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(model.device)
        with torch.no_grad():
            gen = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=True, temperature=0.8, top_k=40,
                                 pad_token_id=tokenizer.pad_token_id)
        out.append(prompt + tokenizer.decode(gen[0, ids["input_ids"].shape[1]:], skip_special_tokens=True))
    return out


# --------------------------------------------------------------------------- pretraining


@dataclass
class PretrainResult:
    history: list[dict] = field(default_factory=list)  # step, tokens, seconds, loss, val_ppl
    samples: dict[int, list[str]] = field(default_factory=dict)  # step -> continuations
    tokens_per_second: float = 0.0

    def table(self):
        import pandas as pd

        return pd.DataFrame(self.history)


def warmup_cosine(steps: int, warmup: int):
    """The usual pretraining schedule as a factor of the peak rate: linear warmup, then cosine decay to 10%.

    Returns ``factor(step)``, what ``torch.optim.lr_scheduler.LambdaLR`` multiplies the peak by.
    """
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, steps - warmup))
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def _lm_batch(ids) -> dict:
    """A pretraining batch: the labels are the inputs (the model shifts them by one itself)."""
    return {"input_ids": ids, "labels": ids}


def plan_steps(make_step, model, train_blocks, batch_size: int, seconds: float, most: int, least: int = 1,
               trial_steps: int = 3) -> int:
    """How many steps fit in SECONDS on this machine, now: time a few steps on a throwaway copy.

    MAKE_STEP(model) builds the notebook's training step for a model; it is called on a deep copy,
    so the model itself, and the optimizer the notebook builds afterwards, start untouched.
    Planning the number of steps up front (instead of stopping when time runs out) lets the
    learning-rate schedule run its full course, warmup to final decay, on a fast or a slow machine.
    At least LEAST steps, at most MOST.
    """
    import copy

    trial = copy.deepcopy(model).train()
    step = make_step(trial)
    batch = _lm_batch(train_blocks[:batch_size])
    times = []
    for _ in range(trial_steps):
        began = time.perf_counter()
        step(batch)
        times.append(time.perf_counter() - began)
    step_seconds = sum(times[1:]) / len(times[1:]) if len(times) > 1 else times[0]  # the first pays one-time costs
    del trial, step
    return max(least, min(most, int(seconds / step_seconds)))


def pretrain(model, tokenizer, train_blocks, val_blocks, train_step, steps: int = 300, batch_size: int = 16,
             eval_every: int = 50, prompts=(), seed: int = 0, max_seconds: float | None = None,
             on_eval=None) -> PretrainResult:
    """The loop around TRAIN_STEP: random blocks in, held-out perplexity and samples every EVAL_EVERY steps.

    TRAIN_STEP(batch) -> loss is the notebook's step (forward, backward, clip, optimizer and
    schedule steps); BATCH is ``{"input_ids": ids, "labels": ids}``. MAX_SECONDS, if given, stops
    early (with a final evaluation) so a slow machine stays in budget.
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    result, seen, started, loss = PretrainResult(), 0, time.perf_counter(), float("nan")
    eval_seconds = 0.0

    def checkpoint(step: int) -> None:
        nonlocal eval_seconds
        began = time.perf_counter()
        row = {"step": step, "tokens": seen, "seconds": round(time.perf_counter() - started, 1), "loss": loss,
               "val_ppl": perplexity_on_blocks(model, val_blocks)}
        result.history.append(row)
        if prompts:
            result.samples[step] = sample(model, tokenizer, list(prompts), seed=seed)
        eval_seconds += time.perf_counter() - began
        if on_eval:
            on_eval(row, result)

    checkpoint(0)
    for step in range(steps):
        model.train()  # checkpoints switch to eval mode
        ids = train_blocks[torch.randint(len(train_blocks), (batch_size,), generator=generator)]
        loss, seen = train_step(_lm_batch(ids)), seen + ids.numel()
        out_of_time = max_seconds is not None and time.perf_counter() - started > max_seconds
        if (step + 1) % eval_every == 0 or step + 1 == steps or out_of_time:
            checkpoint(step + 1)
        if out_of_time:
            print(f"stopped at step {step + 1} of {steps}: the {max_seconds:.0f} s budget is used up")
            break
    result.tokens_per_second = seen / max(time.perf_counter() - started - eval_seconds, 1e-9)  # training only
    return result


def plot(result: PretrainResult, title: str = "pretraining from scratch"):
    import matplotlib.pyplot as plt

    table = result.table()
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.2))
    ax[0].plot(table["step"][1:], table["loss"][1:], marker="o")
    ax[0].set(xlabel="step", ylabel="training loss (last batch)", title=title)
    ax[1].plot(table["step"], table["val_ppl"], marker="o", color="tab:orange")
    ax[1].set(xlabel="step", ylabel="held-out perplexity", yscale="log", title="held-out text (unseen modules)")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- instruction tuning


def chat_examples(records: list[dict], tokenizer, max_length: int = 256) -> list[dict]:
    """Instruction pairs -> ChatML token ids with labels only on the answers (batches.encode)."""
    out = []
    for r in records:
        user = r["instruction"] + (f"\n\n{r['input']}" if r.get("input") else "")
        ex = batches.encode([{"role": "user", "content": user}, {"role": "assistant", "content": r["output"]}],
                            tokenizer)
        if ex["length"] <= max_length:
            out.append(ex)
    return out


def _pad(examples: list[dict], pad_id: int):
    import torch

    width = max(e["length"] for e in examples)
    ids = torch.full((len(examples), width), pad_id)
    labels = torch.full((len(examples), width), batches.IGNORE)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        ids[i, : e["length"]], labels[i, : e["length"]], mask[i, : e["length"]] = (
            torch.tensor(e["input_ids"]), torch.tensor(e["labels"]), 1)
    return ids, labels, mask


def instruction_tune(model, tokenizer, examples: list[dict], train_step, steps: int = 60, batch_size: int = 8,
                     seed: int = 0) -> list[float]:
    """Stage two, the loop around TRAIN_STEP: padded batches of chat EXAMPLES, the loss on answers only.

    TRAIN_STEP is the notebook's step built for MODEL (its own rate and schedule); each BATCH is
    ``{"input_ids", "attention_mask", "labels"}`` with the prompt and the padding labelled -100.
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    losses = []
    model.train()
    for _ in range(steps):
        picks = torch.randint(len(examples), (batch_size,), generator=generator).tolist()
        ids, labels, mask = _pad([examples[i] for i in picks], tokenizer.pad_token_id)
        losses.append(train_step({"input_ids": ids, "attention_mask": mask, "labels": labels}))
    return losses


def answer_loss(model, examples: list[dict]) -> float:
    """Mean loss on the answers of EXAMPLES (held-out chat pairs)."""
    import torch

    model.eval()
    ids, labels, mask = _pad(examples, 0)
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, labels=labels).loss.item()


def chat(model, tokenizer, question: str, max_new_tokens: int = 40) -> str:
    """Greedy answer to one user turn, through the chat template (as notebook 02 asks the default model)."""
    import torch

    model.eval()
    inputs = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, repetition_penalty=1.2,
                             eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
                             pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def save(model, tokenizer, folder) -> Path:
    """A normal model folder: ``AutoModelForCausalLM.from_pretrained(folder)`` reloads it offline."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


# --------------------------------------------------------------------------- the honest comparison

# SmolLM2-135M was pretrained on 2 trillion tokens (model card of HuggingFaceTB/SmolLM2-135M and
# Allal et al. 2025, "SmolLM2: When Smol Goes Big", arXiv:2502.02737).
DEFAULT_PRETRAINING_TOKENS = 2_000_000_000_000


def compare(entries, text: str, question: str, seq_len: int = 128) -> list[dict]:
    """Models side by side on the same held-out TEXT and the same QUESTION.

    ENTRIES: (name, model, tokenizer, pretraining tokens) for each model.
    """
    rows = []
    for name, model, tok, tokens in entries:
        token_blocks = blocks(tok, text, seq_len)
        rows.append({"model": name, "parameters": count_parameters(model), "pretraining tokens": tokens,
                     "held-out ppl (own tokenizer)": round(perplexity_on_blocks(model, token_blocks, 8), 1),
                     "bits per byte": round(bits_per_byte(model, tok, text, seq_len), 3),
                     "answer": chat(model, tok, question)})
    return rows
