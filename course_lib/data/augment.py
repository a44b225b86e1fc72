"""Augmentation (optional): synonym and typo copies of questions, and template-filled new examples.

Answers are never changed, and every copy's source says what it was made from ("x.jsonl:12+noise"),
so ``split`` can keep an original and its copies on the same side.
"""

from __future__ import annotations

import itertools
import random
import re

# Word-level synonyms for questions; answers are left alone so the facts and the persona's voice stay.
SYNONYMS = {
    "best": ["ideal", "right"], "often": ["frequently"], "grow": ["raise", "cultivate"], "help": ["assist"],
    "start": ["begin"], "quickly": ["fast"], "big": ["large"], "small": ["little"], "tips": ["advice"],
    "bugs": ["insects"], "plants": ["greens"], "need": ["require"], "good": ["decent", "nice"],
    "soil": ["earth", "dirt"], "dying": ["wilting"], "fix": ["solve"], "easy": ["simple"], "garden": ["yard"], "way": ["method"], "stop": ["prevent"],
}
TEMPLATES = [
    ("When should I plant {crop} outside?",
     "Plant {crop} outside once your last frost has passed and the soil has warmed. Harden seedlings off "
     "for about a week first so they get used to sun and wind. Happy growing!"),
    ("How much sun do {crop} need?",
     "Most {crop} do best with six or more hours of direct sun a day. If your spot is shadier, choose a "
     "compact or shade-tolerant variety and expect a smaller harvest. Happy growing!"),
    ("Can I grow {crop} in a container on my {place}?",
     "Yes! Pick a pot with drainage holes, use fresh potting mix rather than garden soil, and water more "
     "often than you would in the ground: containers dry out fast on a {place}. Happy growing!"),
]
SLOTS = {"crop": ["tomatoes", "peppers", "strawberries", "lettuce", "beans", "herbs"],
         "place": ["balcony", "patio", "windowsill", "terrace"]}


def _with_user(record: dict, fn, tag: str) -> dict:
    messages = [{**m, "content": fn(m["content"])} if m["role"] == "user" else m for m in record["messages"]]
    return {"messages": messages, "source": f"{record['source']}+{tag}"}


def synonym_replace(record: dict, rate: float = 0.5, seed: int = 0, synonyms=SYNONYMS) -> dict:
    """A copy whose question has some words swapped for synonyms (the answer is untouched)."""
    rng = random.Random(f"{seed}:{record['source']}")

    def swap(text):
        def one(match):
            word = match.group(0)
            options = synonyms.get(word.lower())
            if not options or rng.random() > rate:
                return word
            new = rng.choice(options)
            return new.capitalize() if word[0].isupper() else new
        return re.sub(r"[A-Za-z]+", one, text)

    return _with_user(record, swap, "synonyms")


def add_noise(record: dict, rate: float = 0.1, seed: int = 0) -> dict:
    """A copy whose question has light typos (swapped letters, a dropped letter, no capital, no '?')
    so the model copes with how people really type. The answer is never noised."""
    rng = random.Random(f"{seed}:{record['source']}:noise")

    def noise(text):
        words = text.split(" ")
        for i, word in enumerate(words):
            if len(word) > 3 and word.isalpha() and rng.random() < rate * 3:
                k = rng.randrange(len(word) - 1)
                words[i] = word[:k] + word[k + 1] + word[k] + word[k + 2:] if rng.random() < 0.5 else word[:k] + word[k + 1:]
        text = " ".join(words)
        text = text[:1].lower() + text[1:] if rng.random() < 0.5 else text
        return text.rstrip("?") if rng.random() < 0.5 else text

    return _with_user(record, noise, "noise")


def fill_templates(templates=TEMPLATES, slots=SLOTS, n: int = 12, seed: int = 0) -> list[dict]:
    """N new examples made by filling question/answer templates with slot values."""
    rng = random.Random(seed)
    out, seen = [], set()
    combos = [(t, dict(zip(slots, values))) for t in templates for values in itertools.product(*slots.values())]
    rng.shuffle(combos)
    for (question, answer), values in combos:
        q = question.format(**values)
        if q in seen:
            continue
        seen.add(q)
        out.append({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": answer.format(**values)}],
                    "source": f"template:{len(out) + 1}"})
        if len(out) >= n:
            break
    return out


def augment(records: list[dict], synonyms: bool = True, noise: bool = True, templates: int = 0,
            share: float = 0.3, seed: int = 0) -> list[dict]:
    """Extra examples: synonym and noise copies of a SHARE of the records, plus TEMPLATES filled ones.

    Returns only the new records (add them to the training split, not before splitting: a copy in
    validation of an example in train makes the validation loss look better than it is).
    """
    rng = random.Random(seed)
    chosen = rng.sample(records, k=min(len(records), round(len(records) * share)))
    extra = []
    for record in chosen:
        if synonyms:
            copy = synonym_replace(record, seed=seed)
            if copy["messages"] != record["messages"]:
                extra.append(copy)
        if noise:
            extra.append(add_noise(record, seed=seed))
    return extra + (fill_templates(n=templates, seed=seed) if templates else [])
