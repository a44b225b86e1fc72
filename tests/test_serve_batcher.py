"""The server's batcher without a model: the order it serves jobs in, and its wait estimate."""

from __future__ import annotations

import threading
import time

import pytest

from course_lib.serve.engine import Batcher, GenRequest, GenResult


class GatedEngine:
    """Records each batch's prompts; holds every batch until the gate opens."""

    def __init__(self):
        self.batches: list[list[int]] = []
        self.gate = threading.Event()

    def generate_batch(self, requests):
        self.gate.wait(10)
        self.batches.append([r.prompt_ids[0] for r in requests])
        return [GenResult("x", 2, "stop") for _ in requests]


def test_jobs_are_served_in_the_order_they_came_even_when_their_settings_differ():
    engine = GatedEngine()
    batcher = Batcher(engine, max_batch=2, wait_ms=50)
    futures = [batcher.submit(GenRequest([0], 4))]
    time.sleep(0.3)  # the worker took job 0 alone (nothing came within its wait) and waits at the gate
    for number, temperature in enumerate([0.0, 0.7, 0.0, 0.7, 0.0], start=1):  # greedy and sampled, interleaved
        futures.append(batcher.submit(GenRequest([number], 4, temperature=temperature)))
    engine.gate.set()
    for future in futures:
        future.result(timeout=10)
    batcher.close()
    # job 2 (sampled) could not join [1, 3]; it leads the next batch, ahead of job 4, which came later
    assert engine.batches == [[0], [1, 3], [2, 4], [5]]


def test_the_wait_estimate_counts_the_full_batches_ahead():
    engine = GatedEngine()
    batcher = Batcher(engine, max_batch=4, wait_ms=0)
    assert batcher.estimate_wait(10) is None  # nothing measured: no estimate, nothing refused
    batcher.step_s = 0.01
    assert batcher.estimate_wait(10) == pytest.approx(0.1)  # an idle server: one batch of 10 steps
    first = batcher.submit(GenRequest([0], 10))
    time.sleep(0.2)  # in flight, held at the gate
    others = [batcher.submit(GenRequest([n], 10)) for n in range(1, 9)]
    # 8 waiting: two full batches ahead, then this request's own, plus what is left of the batch in flight
    assert 0.3 <= batcher.estimate_wait(10) <= 0.3 + 0.1
    engine.gate.set()
    for future in [first, *others]:
        future.result(timeout=10)
    batcher.close()


def test_warm_up_measures_a_full_batch():
    engine = GatedEngine()
    engine.gate.set()
    batcher = Batcher(engine, max_batch=3)
    step = batcher.warm_up([7, 8, 9], tokens=8)
    assert engine.batches == [[7, 7, 7]] and step == batcher.step_s > 0
    batcher.close()
