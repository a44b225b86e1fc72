"""A saved training run: where the course keeps it, what it was trained with, and how to load it.

Every stage after training needs the same three things from notebook 02's output: find the trained
model in a run directory, read the settings it was trained with (``course_train.json``, written
beside the adapter), and load it back onto its base model. They live here, in one place, so that
the deployment server, the quantization stage and the appendices all agree on what a run is.
"""

from __future__ import annotations

import json
from pathlib import Path

from course_lib import models

TRAIN_FILE = "course_train.json"  # the run's TrainConfig (+ world size), written by train.save_trained
# Where a run directory keeps a trained persona model: notebook 02's LoRA, its QLoRA, then the
# short fallback train.ensure_adapter trains. Notebooks 03-05 and the server look in this order.
ADAPTER_FOLDERS = (("train", "lora", "final"), ("train", "qlora", "final"), ("quantize", "adapter", "final"))


def read_config(folder) -> dict:
    """The settings FOLDER's model was trained with; a clear error if FOLDER holds no trained model."""
    meta = Path(folder) / TRAIN_FILE
    if not meta.exists():
        raise FileNotFoundError(f"{folder} holds no trained model (no {TRAIN_FILE}): train one first.")
    try:
        return json.loads(meta.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{meta}: not valid JSON ({error}); train again to rewrite it.") from None


def write_config(folder, config: dict) -> Path:
    """Write CONFIG beside the saved model, so the folder reloads by itself (``load``)."""
    meta = Path(folder) / TRAIN_FILE
    meta.write_text(json.dumps(config, indent=2))
    return meta


def is_trained(folder, model_name: str | None = None) -> bool:
    """True if FOLDER holds a trained LoRA, QLoRA or full model (on MODEL_NAME, if given)."""
    if not (Path(folder) / TRAIN_FILE).exists():
        return False
    cfg = read_config(folder)
    return model_name in (None, cfg.get("model")) and cfg.get("method") in ("lora", "qlora", "full")


def find_adapter(run_dir, model_name: str | None = None) -> Path | None:
    """The first trained model of ADAPTER_FOLDERS in RUN_DIR (trained on MODEL_NAME, if given), or None."""
    for parts in ADAPTER_FOLDERS:
        folder = Path(run_dir).joinpath(*parts)
        if is_trained(folder, model_name):
            return folder
    return None


def fingerprint(folder) -> str:
    """A short name for the model saved in FOLDER: it changes whenever its weights or its adapter
    settings do (``adapter_config.json``: alpha scales the update, the target modules place it).

    ``evaluate.remembered`` keys its answers by it, so answers of an old adapter are never reused
    for a new one.
    """
    import hashlib

    digest = hashlib.sha256()
    weights = sorted(Path(folder).glob("*.safetensors"))
    if not weights:
        raise FileNotFoundError(f"{folder} holds no .safetensors weights to fingerprint")
    for file in weights + [f for f in [Path(folder) / "adapter_config.json"] if f.exists()]:
        with open(file, "rb") as stream:  # in chunks: a full fine-tune's weights are half a gigabyte
            for chunk in iter(lambda: stream.read(1 << 20), b""):
                digest.update(chunk)
    return f"trained-{digest.hexdigest()[:12]}"


def load(folder, device: str = "auto", dtype: str = "auto", trainable: bool = False,
         full_precision: bool = False, adapter_name: str = "default"):
    """Reload a saved run (an adapter on its base model, or a full fine-tune) -> (model, tokenizer).

    ``full_precision=True`` loads a QLoRA adapter's base in full precision instead of 4 bits (to merge
    it, or to go on training it where bitsandbytes' 4-bit layers are not wanted). ``trainable=True``
    keeps the adapter's weights trainable and the KV cache off (training needs both); otherwise the
    model is in eval mode. ``adapter_name`` names the loaded adapter, for a model that gets a second one.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(folder)
    cfg = read_config(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    device = models.pick_device(device)
    if cfg["method"] == "full":
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=models.pick_dtype(device, dtype)).to(device)
    else:
        from peft import PeftModel

        bits = 4 if cfg["method"] == "qlora" and not full_precision else None
        base, _ = models.load(cfg["model"], device=device, dtype=dtype, bits=bits)
        if trainable:
            base.config.use_cache = False
        model = PeftModel.from_pretrained(base, folder, adapter_name=adapter_name, is_trainable=trainable)
    return (model if trainable else model.eval()), tokenizer
