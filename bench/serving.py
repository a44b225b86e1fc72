"""Figure 5: the served path against a naive generation loop, and throughput under 32 clients.

Batch 1, greedy, the same model, prompt and number of new tokens:
- naive: what a learner writes first, the whole sequence through the model for every new token
  (no KV cache), the argmax appended;
- served: ``course_lib.serve.engine.TorchEngine`` (what the server runs): ``generate`` with the KV cache;
  time to first token measured on its streaming path (``TorchEngine.stream``).
Both run in turns (A B A B) and the best round of each counts. Then the HTTP server
(``course_lib.serve.Server``) answers the persona questions from 32 concurrent clients
(``course_lib.serve.loadtest.run``) and, for comparison, one client asking one question at a time.
Last, the runtime a learner would otherwise pick: llama.cpp's own server on a q8_0 GGUF file of the
same model, against the course server, both asked through the OpenAI route (``/v1/chat/completions``),
one client at a time and 32 at once.
"""

from __future__ import annotations

import time

from bench.common import ratio


def naive_generate(model, prompt_ids: list[int], new_tokens: int, stop_ids=()) -> tuple[list[int], float]:
    """The no-cache loop: returns the new tokens and the seconds to the first one."""
    import torch

    ids, out, first = list(prompt_ids), [], 0.0
    started = time.perf_counter()
    with torch.no_grad():
        for _ in range(new_tokens):
            logits = model(input_ids=torch.tensor([ids]), use_cache=False).logits
            token = int(logits[0, -1].argmax())
            first = first or time.perf_counter() - started
            if token in stop_ids:
                break
            ids.append(token)
            out.append(token)
    return out, first


def _served(engine, prompt_ids, new_tokens):
    from course_lib.serve.engine import GenRequest

    request = GenRequest(prompt_ids, max_new_tokens=new_tokens)
    started = time.perf_counter()
    next(iter(engine.stream(GenRequest(prompt_ids, max_new_tokens=1))))  # first visible piece
    first = time.perf_counter() - started
    started = time.perf_counter()
    result = engine.generate_batch([request])[0]
    return result.completion_tokens, time.perf_counter() - started, first


def decode(model_name: str, new_tokens: int = 48, rounds: int = 2) -> dict:
    """Decode tokens/s and time to first token, naive loop vs the served engine, at batch 1."""
    from course_lib import models
    from course_lib.quantize.measure import _chat_ids
    from course_lib.serve import engine as engines

    model, tokenizer = models.load(model_name)
    model.eval()
    engine = engines.TorchEngine(model, tokenizer, {"source": model_name})
    prompt = _chat_ids(tokenizer, "Tell me about tomatoes in a few sentences.")
    naive_best, served_best = None, None
    for _ in range(rounds):
        started = time.perf_counter()
        tokens, first = naive_generate(model, prompt, new_tokens, set(engine.stop_ids))
        naive = (len(tokens), time.perf_counter() - started, first)
        served = _served(engine, prompt, new_tokens)
        naive_best = min(naive_best or naive, naive, key=lambda r: r[1])
        served_best = min(served_best or served, served, key=lambda r: r[1])
    del engine, model
    naive_tps, served_tps = naive_best[0] / naive_best[1], served_best[0] / served_best[1]
    return {"serve_decode_speedup": ratio(served_tps, naive_tps), "serve_tokens_per_s": served_tps,
            "naive_tokens_per_s_decode": naive_tps, "serve_ttft_ms": served_best[2] * 1000,
            "naive_ttft_ms": naive_best[2] * 1000, "decode_new_tokens": served_best[0],
            "naive_new_tokens": naive_best[0], "prompt_tokens": len(prompt)}


def concurrent(model_name: str, threads: int, clients: int = 32, questions: int = 32, sequential: int = 8,
               new_tokens: int = 32) -> dict:
    """Tokens/s of the HTTP server under CLIENTS concurrent clients vs one client, one request at a time."""
    from course_lib import evaluate, serve
    from course_lib.serve import loadtest

    asked = [item["question"] for item in evaluate.load_eval_set("persona")]
    asked = (asked * (1 + questions // len(asked)))[:questions]
    with serve.Server(model_name, threads=threads) as server:
        loadtest.run(server.url, asked[:1], clients=1, max_new_tokens=4)  # warm-up
        one = loadtest.run(server.url, asked[:sequential], clients=1, max_new_tokens=new_tokens).summary()
        many = loadtest.run(server.url, asked, clients=clients, max_new_tokens=new_tokens).summary()
    return {"serve_concurrent_tokens_per_s": many["tokens_per_s"], "serve_sequential_tokens_per_s": one["tokens_per_s"],
            "serve_concurrency_speedup": ratio(many["tokens_per_s"], one["tokens_per_s"]),
            "serve_clients": clients, "serve_p50_ms": many["latency_p50_ms"], "serve_p95_ms": many["latency_p95_ms"],
            "serve_answered": f"{many['requests_answered']}/{many['requests_sent']}"}


def _load(url: str, asked: list[str], clients: int, sequential: int, new_tokens: int) -> tuple[dict, dict]:
    """(one client, one question at a time) and (CLIENTS at once) through the OpenAI chat route."""
    from course_lib.serve import loadtest

    loadtest.run(url, asked[:1], clients=1, max_new_tokens=4, route="chat")  # warm-up
    one = loadtest.run(url, asked[:sequential], clients=1, max_new_tokens=new_tokens, route="chat").summary()
    many = loadtest.run(url, asked, clients=clients, max_new_tokens=new_tokens, route="chat").summary()
    return one, many


def against_llama_cpp(model_name: str, run_dir, threads: int, clients: int = 32, questions: int = 32,
                      sequential: int = 8, new_tokens: int = 32) -> dict:
    """Tokens/s of the course server (PyTorch, in the format precision="auto" chose) over llama.cpp's
    server (q8_0), batch 1 and CLIENTS."""
    from pathlib import Path

    from course_lib import evaluate, models, quantize, serve

    missing = quantize.llama_cpp_available() or quantize.converter_available()  # None when both are there
    if missing:
        return {"llama_cpp_skipped": missing}
    folder = Path(models.model_location(model_name)[0])
    if not folder.is_dir():
        return {"llama_cpp_skipped": f"{model_name} is not a local folder: the GGUF converter reads one"}
    gguf = Path(run_dir) / "bench" / "serve" / f"{folder.name}-q8_0.gguf"
    try:
        if not gguf.exists():
            gguf.parent.mkdir(parents=True, exist_ok=True)
            quantize.convert_gguf(folder, gguf, "q8_0")
    except Exception as error:  # the other serving figures are measured already: keep them
        return {"llama_cpp_skipped": f"GGUF conversion failed: {type(error).__name__}: {str(error)[:150]}"}
    asked = [item["question"] for item in evaluate.load_eval_set("persona")]
    asked = (asked * (1 + questions // len(asked)))[:questions]
    with serve.Server(model_name, threads=threads) as server:
        ours = _load(server.url, asked, clients, sequential, new_tokens)
    try:
        with serve.LlamaServer(gguf, threads=threads) as server:
            theirs = _load(server.url, asked, clients, sequential, new_tokens)
    except (RuntimeError, TimeoutError) as error:  # llama.cpp died (a crash on this CPU, say): reported, not raised
        return {"llama_cpp_skipped": str(error).splitlines()[0][:200]}
    return {"serve_vs_llama_cpp_bs1": ratio(ours[0]["tokens_per_s"], theirs[0]["tokens_per_s"]),
            "serve_vs_llama_cpp_32_clients": ratio(ours[1]["tokens_per_s"], theirs[1]["tokens_per_s"]),
            "llama_cpp_tokens_per_s_bs1": theirs[0]["tokens_per_s"], "llama_cpp_tokens_per_s_clients": theirs[1]["tokens_per_s"],
            "course_chat_tokens_per_s_bs1": ours[0]["tokens_per_s"], "course_chat_tokens_per_s_clients": ours[1]["tokens_per_s"],
            "llama_cpp_answered": f"{theirs[1]['requests_answered']}/{theirs[1]['requests_sent']}"}
