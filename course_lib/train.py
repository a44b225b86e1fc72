"""The train stage: turn the base model into the persona with full fine-tuning, LoRA, QLoRA or
prompt tuning, on transformers' Trainer with PEFT.

Methods differ only in what is trainable and how the frozen weights are stored:
- ``full``: every weight trains (AdamW keeps two extra fp32 copies of each: the memory hog);
- ``lora``: frozen base + small low-rank matrices B·A added to chosen projections;
- ``qlora``: the same, with the frozen base stored in 4-bit NF4 by bitsandbytes;
- ``prompt_tuning``: frozen model, a few trainable "virtual token" embeddings in front of the input.
"""

from __future__ import annotations

METHODS = ("full", "lora", "qlora", "prompt_tuning")
# The seeds' LoRA targets (attention query and value) and PEFT's shortcut for every linear layer.
TARGETS = {"q_proj,v_proj": ["q_proj", "v_proj"], "all-linear": "all-linear"}
PROMPT_INIT = "You are Sprout, a friendly gardening assistant made by Greenleaf Labs."


def prepare_model(model_name: str, method: str = "lora", *, lora_r: int = 16, lora_alpha: int = 32,
                  lora_dropout: float = 0.1, target_modules: str = "q_proj,v_proj",
                  num_virtual_tokens: int = 16, gradient_checkpointing: bool = False,
                  device: str = "auto"):
    """Load MODEL_NAME and make it trainable with METHOD; returns (model, tokenizer)."""
    from peft import (LoraConfig, PromptTuningConfig, PromptTuningInit, get_peft_model,
                      prepare_model_for_kbit_training)

    from course_lib import models

    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, not {method!r}")
    model, tokenizer = models.load(model_name, device=device, bits=4 if method == "qlora" else None)
    model.config.use_cache = False  # the KV cache only helps generation; training recomputes anyway
    if method == "full":
        if gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return model, tokenizer
    if method == "qlora":
        # Freezes the 4-bit base, keeps norms in fp32 and (optionally) turns on checkpointing.
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False})
    elif gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()  # checkpointed blocks need a grad-requiring input
    if method == "prompt_tuning":
        config = PromptTuningConfig(
            task_type="CAUSAL_LM", num_virtual_tokens=num_virtual_tokens,
            prompt_tuning_init=PromptTuningInit.TEXT, prompt_tuning_init_text=PROMPT_INIT,
            tokenizer_name_or_path=models.model_location(model_name)[0])
    else:
        config = LoraConfig(
            task_type="CAUSAL_LM", r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
            target_modules=TARGETS.get(target_modules, target_modules), bias="none")
    return get_peft_model(model, config), tokenizer


def trainable_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts; for QLoRA, 4-bit weights count as their real numbers."""
    trainable = total = 0
    for param in model.parameters():
        # bitsandbytes packs two 4-bit values per byte: the stored tensor has half the elements.
        n = param.numel() * 2 if param.__class__.__name__ == "Params4bit" else param.numel()
        total += n
        trainable += n if param.requires_grad else 0
    return trainable, total
