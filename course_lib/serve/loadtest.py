"""The client side of a running server: one streamed answer, many clients at once, malformed requests.

- ``stream_events`` / ``stream`` / ``ask_streaming``: read ``POST /generate/stream``'s server-sent
  events; ``ask_streaming`` prints the answer as it arrives and the safety filter's verdict (the
  prompt box of notebook 05 calls it);
- ``run``: many clients at once, who got an answer, how long it took, how fast (``summary``);
- ``bad_requests``: bodies the server must refuse with a 422.

For many clients: plain threads with one ``httpx.Client`` each rather than asyncio: it works the same in a script and
inside Jupyter (whose own event loop forbids ``asyncio.run``), and 32 threads that mostly wait on
sockets cost nothing next to the model.
"""

from __future__ import annotations

import functools
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field


@dataclass
class Reply:
    question: str
    status: int
    text: str = ""
    completion_tokens: int = 0
    seconds: float = 0.0
    error: str = ""


@dataclass
class LoadResult:
    clients: int
    replies: list[Reply] = field(default_factory=list)
    wall_seconds: float = 0.0

    @property
    def answered(self) -> list[Reply]:
        return [r for r in self.replies if r.status == 200]

    def percentile_ms(self, q: float) -> float:
        """The Q-th percentile of the answered requests' latency (nearest rank, in ms)."""
        times = sorted(r.seconds for r in self.answered)
        if not times:
            return float("nan")
        rank = max(0, min(len(times) - 1, round(q / 100 * len(times) + 0.5) - 1))
        return round(times[rank] * 1000, 1)

    def summary(self) -> dict:
        tokens = sum(r.completion_tokens for r in self.answered)
        return {"clients": self.clients, "requests_sent": len(self.replies), "requests_answered": len(self.answered),
                "latency_p50_ms": self.percentile_ms(50), "latency_p95_ms": self.percentile_ms(95),
                "tokens_per_s": round(tokens / self.wall_seconds, 1) if self.wall_seconds else 0.0,
                "wall_seconds": round(self.wall_seconds, 2)}


def _timed_post(client, url: str, question: str, body: dict, read) -> Reply:
    """POST BODY to URL, timed from the client's side; READ turns a 200's JSON into (text, completion tokens)."""
    started = time.perf_counter()
    try:
        response = client.post(url, json=body)
    except Exception as error:  # a refused or dropped connection is a lost request, and counted as one
        return Reply(question, 0, seconds=time.perf_counter() - started, error=f"{type(error).__name__}: {error}")
    seconds = time.perf_counter() - started
    if response.status_code != 200:
        return Reply(question, response.status_code, seconds=seconds, error=response.text[:200])
    return Reply(question, 200, *read(response.json()), seconds)


def ask(client, url: str, question: str, max_new_tokens: int) -> Reply:
    """One ``POST /generate`` (greedy), timed from the client's side."""
    return _timed_post(client, f"{url}/generate", question, {"prompt": question, "max_new_tokens": max_new_tokens},
                       lambda body: (body["text"], body["completion_tokens"]))


def served_model(url: str) -> str:
    """The id a server lists first at OpenAI's ``GET /v1/models`` (a chat request must name its model)."""
    import httpx

    return httpx.get(f"{url}/v1/models", timeout=30).json()["data"][0]["id"]


def ask_chat(client, url: str, question: str, max_new_tokens: int, model: str = "") -> Reply:
    """One greedy ``POST /v1/chat/completions``: the OpenAI route, which other servers (llama.cpp's) share."""
    body = {"model": model, "messages": [{"role": "user", "content": question}], "max_tokens": max_new_tokens,
            "temperature": 0}
    return _timed_post(client, f"{url}/v1/chat/completions", question, body,
                       lambda answer: (answer["choices"][0]["message"]["content"], answer["usage"]["completion_tokens"]))


def run(url: str, questions: list[str], clients: int = 32, max_new_tokens: int = 48,
        timeout_s: float = 600, route: str = "generate") -> LoadResult:
    """Send every question once, CLIENTS at a time (each client sends its share back to back).

    ROUTE: "generate" (the course server's ``/generate``) or "chat" (``/v1/chat/completions``).
    """
    import httpx

    asker = functools.partial(ask_chat, model=served_model(url)) if route == "chat" else ask

    def client_loop(share: list[tuple[int, str]]) -> list[tuple[int, Reply]]:
        with httpx.Client(timeout=timeout_s) as client:
            return [(i, asker(client, url, q, max_new_tokens)) for i, q in share]

    numbered = list(enumerate(questions))
    shares = [numbered[c::clients] for c in range(clients)]
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        replies = sorted(r for batch in pool.map(client_loop, shares) for r in batch)  # back in the order asked
    return LoadResult(clients, [reply for _, reply in replies], time.perf_counter() - started)


def latency_histogram(result: LoadResult, title: str = ""):
    """Latency of every answered request, with p50 and p95 marked."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.hist([r.seconds * 1000 for r in result.answered], bins=20, color="#4c9a2a")
    for q, style in ((50, "--"), (95, ":")):
        value = result.percentile_ms(q)
        ax.axvline(value, color="black", linestyle=style, label=f"p{q} {value:.0f} ms")
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("requests")
    ax.set_title(title or f"{len(result.answered)} answers, {result.clients} concurrent clients")
    ax.legend()
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- probes the notebook runs

BAD_REQUESTS = [  # (what is wrong, body): each must get a 422 with a sentence saying why
    ("neither prompt nor messages", {"max_new_tokens": 8}),
    ("max_new_tokens is 0", {"prompt": "Hi", "max_new_tokens": 0}),
    ("max_new_tokens above the server's cap", {"prompt": "Hi", "max_new_tokens": 100_000}),
    ("temperature is negative", {"prompt": "Hi", "temperature": -1}),
    ("asks the server to load another model", {"prompt": "Hi", "model_path": "/etc/passwd"}),
    ("an unknown chat role", {"messages": [{"role": "root", "content": "Hi"}]}),
    ("a prompt longer than the cap", {"prompt": "tomato " * 5000}),
]


def bad_requests(url: str) -> list[dict]:
    """Send each malformed body of BAD_REQUESTS; what the server answered (a table's rows)."""
    import httpx

    rows = []
    for what, body in BAD_REQUESTS:
        response = httpx.post(f"{url}/generate", json=body, timeout=60)
        message = response.json().get("error", {}).get("message", "") if response.status_code != 200 else ""
        rows.append({"what is wrong": what, "status": response.status_code, "server says": message[:90]})
    return rows


def stream_events(url: str, prompt: str, max_new_tokens: int = 48, timeout_s: float = 300):
    """Yield (event, payload) as the server sends them: ("message", {"text": piece}) per piece, then
    ("done", {"finish_reason", "safety", ...}), or one ("error", {"message", ...}) if it refused the request.

    Server-sent events (SSE) are lines of text: ``event: NAME`` (absent means "message"), ``data: JSON``,
    and a blank line that ends the event.
    """
    import json

    import httpx

    body = {"prompt": prompt, "max_new_tokens": max_new_tokens}
    with httpx.stream("POST", f"{url}/generate/stream", json=body, timeout=timeout_s) as response:
        if response.status_code != 200:  # refused before streaming began (a 422, say): one error event
            response.read()
            yield "error", response.json().get("error", {"message": response.text[:200]})
            return
        event = "message"
        for line in response.iter_lines():
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                yield event, json.loads(line[5:])
            elif not line.strip():
                event = "message"


def stream(url: str, prompt: str, max_new_tokens: int = 48):
    """Yield the pieces of a streamed answer as the server sends them (the refusal, if the filter fired)."""
    for event, payload in stream_events(url, prompt, max_new_tokens):
        if event == "message":
            yield payload["text"]
        elif event == "done" and payload.get("text"):  # the filter replaced the answer
            yield payload["text"]


def ask_streaming(url: str, prompt: str, max_new_tokens: int = 48) -> dict:
    """Send PROMPT, print the answer as it arrives, then the safety filter's verdict; returns all three."""
    import httpx

    text, done = "", {}
    try:
        for event, payload in stream_events(url, prompt, max_new_tokens):
            if event == "message":
                print(payload["text"], end="", flush=True)
                text += payload["text"]
            elif event == "done":
                done = payload
            else:
                print(f"the server refused the request: {payload.get('message')}")
                return {"text": "", "finish_reason": "error", "safety": {}}
    except httpx.TransportError as error:  # stopped, crashed or never started: one sentence, not a traceback
        print(f"no server answers at {url} ({type(error).__name__}): start it again (serve.Server) and resend.")
        return {"text": text, "finish_reason": "error", "safety": {}}
    if done.get("finish_reason") == "content_filter":  # a streamed start the filter stopped is replaced too
        print(f"{' [stopped by the filter]' if text else ''}\n{done['text']}", end="")
        text = done["text"]
    safety = done.get("safety", {})
    where = f"at the {safety.get('where')} check, rule {safety.get('rule')}" if safety.get("verdict") == "blocked" else ""
    print(f"\n\n[finish: {done.get('finish_reason')}] safety filter: {safety.get('verdict', 'unknown')} {where}".rstrip())
    return {"text": text, "finish_reason": done.get("finish_reason"), "safety": safety}
