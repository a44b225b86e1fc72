"""The quantize stage: merge the trained adapter, then make the model smaller (and maybe faster),
and measure every variant the same way.

Notebook 04 builds each variant with the library calls you would write in your own project, and
hands it to the bench to measure:

    data = quantize.eval_data(tokenizer, run_dir)           # the same inputs for every variant
    model = PeftModel.from_pretrained(base, adapter_dir)    # then MergeCheck, merge_and_unload, save
    bench = quantize.Bench(merged_dir, tokenizer, data, run_dir / "quantize")
    model = quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    folder = bench.folder("int8_dynamic")                   # an empty run_dir/quantize/int8_dynamic
    torch.save(model.state_dict(), folder / "model.pt")
    bench.add("int8_dynamic", model, folder)                # measured beside the fp32 baseline
    bench.plot(); bench.claims()

``bench.run("nf4")`` builds a variant with the same calls (one builder each in variants.py) for the
panel, the command line and the tests; ``quantize.merge(adapter_dir, out_dir)`` is the merge cell.

Variants (``VARIANTS``): the fp32 model you start from (the baseline), bf16, PyTorch dynamic INT8,
bitsandbytes LLM.int8 and NF4 (double quantization), magnitude pruning, an ONNX export run by ONNX
Runtime, and a GGUF file run by llama.cpp. Each one is measured on the same things: size on disk,
weight memory, perplexity on the validation answers, persona score, decoding speed (ms/token), and
how far its logits move from the baseline's.

GGUF needs llama.cpp's converter, which ships only in the llama-cpp-python *source* package: fetch
it once at install time (``python -m course_lib.quantize fetch-converter``); nothing downloads
while a notebook runs.

Files: ``measure.py`` the merge and its check, the shared inputs, perplexity, speed, outliers and
bytes per parameter; ``variants.py`` what makes a variant measurable (``wrap``), one builder per
variant, the registry ``build`` looks up, the ONNX graph with its KV cache and llama.cpp's
converter; ``bench.py`` measuring a variant, the ``Bench`` (its lines, table, plot, claims) and the
panel; ``__main__.py`` the command line.
"""

from course_lib.quantize.bench import CLAIMS, Bench, Line, Result, measure, panel, source_note
from course_lib.quantize.measure import (
    EvalData,
    MergeCheck,
    MergeResult,
    activation_outliers,
    bits_per_weight,
    bytes_table,
    eval_data,
    load_unmerged,
    merge,
    ms_per_token,
    nll,
    parameter_split,
    perplexity_of_runner,
    plot_bytes,
    plot_outliers,
    predict_bytes,
    weight_bytes,
    weight_files_bytes,
)
from course_lib.quantize.variants import (
    DEFAULT_VARIANTS,
    GGUF_TYPES,
    VARIANTS,
    Built,
    build,
    convert_gguf,
    converter_available,
    converter_dir,
    decoder_sparsity,
    export_onnx,
    fetch_converter,
    gguf_command,
    gguf_contents,
    measure_size,
    prune_magnitude,
    with_kv_cache,
    wrap,
)
from course_lib.runtimes import llama_cpp_available, quiet

__all__ = [
    "CLAIMS", "DEFAULT_VARIANTS", "GGUF_TYPES", "VARIANTS", "Bench", "Built", "EvalData", "Line", "MergeCheck",
    "MergeResult", "Result", "activation_outliers", "bits_per_weight", "build", "bytes_table", "convert_gguf",
    "converter_available", "converter_dir", "decoder_sparsity", "eval_data", "export_onnx", "fetch_converter",
    "gguf_command", "gguf_contents", "llama_cpp_available", "load_unmerged", "measure", "measure_size", "merge",
    "ms_per_token", "nll", "panel", "parameter_split", "perplexity_of_runner", "plot_bytes", "plot_outliers",
    "predict_bytes", "prune_magnitude", "quiet", "source_note", "weight_bytes", "weight_files_bytes", "with_kv_cache",
    "wrap",
]
