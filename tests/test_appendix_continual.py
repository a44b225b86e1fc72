"""Continual learning: replay mixes, which weights each strategy trains, and notebook A2's figures."""

from __future__ import annotations

import json

import pytest
import torch

from course_lib.appendix import continual


def _random_adapter(base_dir, out):
    """A persona-like LoRA adapter with random B (non-zero), saved the way course_lib.train saves one."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                     init_lora_weights=False)).save_pretrained(out)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(out)
    (out / "course_train.json").write_text(json.dumps({"model": str(base_dir), "method": "lora"}))
    return out


@pytest.fixture(scope="module")
def adapter(tiny_model_dir, tmp_path_factory):
    return _random_adapter(tiny_model_dir, tmp_path_factory.mktemp("continual") / "persona")


def test_the_shipped_data_loads_as_chats():
    new, old = continual.new_data(), continual.old_data()
    assert len(new) == 60 and len(old) == 465
    assert all(r["messages"][-1]["role"] == "assistant" for r in new + old)


def test_replay_mix_has_the_requested_share_of_old_data():
    new, old = continual.new_data(), continual.old_data()
    mixed = continual.mix(new, old, share=0.5, seed=0)
    assert len(mixed) == 120 and mixed[:60] == new
    assert all(r in old for r in mixed[60:]) and len({json.dumps(r) for r in mixed[60:]}) == 60
    assert continual.mix(new, old, 0.0) == new
    with pytest.raises(ValueError, match="replay share"):
        continual.mix(new, old, 1.0)


def test_unknown_strategy_is_refused(adapter, tmp_path):
    with pytest.raises(ValueError, match="strategy must be one of"):
        continual.run_strategy("ewc_magic", adapter, tmp_path)


def test_freeze_lower_trains_only_the_top_layers(adapter):
    model, _ = continual.load_persona(adapter)
    assert continual.freeze_lower_layers(model, keep_top=0.5) == 1  # tiny model: 2 layers
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".layers.1." in n and "lora_" in n for n in trainable)


@pytest.mark.slow
def test_second_adapter_trains_alone_and_leaves_the_persona_weights_untouched(adapter, tmp_path):
    model, tokenizer = continual.load_persona(adapter)
    persona_before = {n: p.detach().clone() for n, p in model.named_parameters() if ".persona." in n}
    continual.add_second_adapter(model)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(f".{continual.NEW}." in n for n in trainable)
    assert set(model.base_model.active_adapters) == {continual.PERSONA, continual.NEW}
    ids = tokenizer("Who are you?", return_tensors="pt")
    with torch.no_grad():
        logits_before = model(**ids).logits
    continual.fit(model, tokenizer, continual.new_data()[:16], steps=3, batch_size=4, learning_rate=1e-2,
                  seed=0, out_dir=tmp_path)
    for name, param in model.named_parameters():
        if name in persona_before:
            assert torch.equal(param, persona_before[name]), name
    with torch.no_grad():  # the new adapter is active and trained: the answers moved
        assert not torch.allclose(model(**ids).logits, logits_before)


def _figs(**rows):
    """Figures as ``continual.figures`` returns them, for (old before, old after, new before, new after) rows."""
    return {name: {"old_score_before": a, "old_score_after": b, "new_score_before": c, "new_score_after": d,
                   "forgetting": round(a - b, 3), "new_gain": round(d - c, 3)} for name, (a, b, c, d) in rows.items()}


def test_describe_names_who_forgot_and_who_learned_the_most():
    figs = _figs(new_only=(0.6, 0.4, 0.1, 0.5), replay=(0.6, 0.7, 0.1, 0.1), new_adapter=(0.6, 0.5, 0.1, 0.3))
    lines = continual.describe(figs).splitlines()
    assert lines[0].startswith("forgot the most: new_only") and "0.600 -> 0.400" in lines[0]
    assert lines[1].startswith("forgot the least: replay")
    assert lines[2].startswith("learned the most: new_only") and "0.100 -> 0.500" in lines[2]
    tied = _figs(new_only=(0.6, 0.4, 0.1, 0.1), replay=(0.6, 0.4, 0.1, 0.1), freeze_lower=(0.6, 0.5, 0.1, 0.1))
    lines = continual.describe(tied).splitlines()
    assert lines[0] == "forgot the most: new_only, replay (old persona score 0.600 -> 0.400)"
    assert lines[2].startswith("learned the same: new_only, replay, freeze_lower")
    assert continual.describe(_figs(a=(0.5, 0.5, 0.0, 0.0), b=(0.5, 0.5, 0.0, 0.0))).startswith("forgot the same: a, b")


def test_replay_plot_draws_one_point_per_share_tried():
    import matplotlib

    matplotlib.use("Agg")
    runs = {0.0: {"old_score_after": 0.4, "new_score_after": 0.5}, 0.5: {"old_score_after": 0.7, "new_score_after": 0.1},
            0.2: {"old_score_after": 0.6, "new_score_after": 0.3}}
    fig = continual.plot_replay(runs, 0.6, 0.1)
    old_line = fig.axes[0].lines[0]
    assert list(old_line.get_xdata()) == [0.0, 0.2, 0.5] and list(old_line.get_ydata()) == [0.4, 0.6, 0.7]


@pytest.mark.slow
def test_notebook_A2_records_every_strategy(executed):
    entry = executed("A2_continual_learning")
    assert entry["status"] == "ok", entry.get("error")
    figures = entry["figures"]
    assert set(figures["strategies"]) == set(continual.STRATEGIES)
    for name, f in figures["strategies"].items():
        for key in ("old_score_before", "old_score_after", "new_score_after"):
            assert 0 <= f[key] <= 1 and figures[f"{name}_{key}"] == f[key]
        assert f["forgetting"] == pytest.approx(f["old_score_before"] - f["old_score_after"], abs=1e-3)
    s = figures["strategies"]
    # what each strategy trains, visible even on the tiny model of the small run
    assert s["replay"]["train_examples"] > s["new_only"]["train_examples"] == 60
    assert s["freeze_lower"]["trainable_params"] < s["new_only"]["trainable_params"]


@pytest.mark.slow
def test_replay_reduces_forgetting_on_the_default_model(tmp_path):
    """The effect the notebook teaches, on the real model with the notebook's default settings."""
    from course_lib import train

    # notebook 02's persona run (40 steps of 8 examples at 4e-3), the adapter `make course` starts from
    adapter = train.ensure_adapter(tmp_path, "smollm2-135m", steps=40, batch_size=8, learning_rate=4e-3)
    results = continual.compare(adapter, tmp_path, strategies=("new_only", "replay"))
    figures = continual.figures(results)
    # Margins, not measured values: a run's own figures are in runs/course_report.json (notebook A2).
    assert figures["new_only"]["forgetting"] >= 0.1  # training on the news alone really forgets
    assert figures["new_only"]["new_gain"] >= 0.2  # ...while it learns the news
    assert figures["replay"]["old_score_after"] >= figures["new_only"]["old_score_after"] + 0.15
