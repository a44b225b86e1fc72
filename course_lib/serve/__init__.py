"""The serve stage (notebook 05): put a model of the course behind HTTP, safely, for many clients.

- ``engine.py``: load any artifact of the course and answer batches of requests (one worker thread);
- ``app.py``: the FastAPI app and its limits; ``background.py``: the ``Server`` process notebook 05
  starts, and ``LlamaServer``, llama.cpp's own OpenAI-compatible server (notebook 04);
  ``openai_chat.py``: the request bodies, with which of OpenAI's chat-completions fields are honoured,
  ignored or refused; ``feedback.py``: the users' thumbs and A-or-B choices, appended to a JSONL file
  that notebook 06 trains on; ``__main__.py``: the ``python -m course_lib.serve`` command line;
- ``safety.py``: the rule-based input/output filter every request goes through (red-teamed in A5);
- ``loadtest.py``: the client side: one streamed answer (and notebook 05's prompt box), many clients at
  once, malformed requests.
"""

from course_lib.serve import engine, feedback, loadtest, safety
from course_lib.serve.app import ServeConfig, create_app
from course_lib.serve.background import LlamaServer, Server, free_port

__all__ = ["LlamaServer", "ServeConfig", "Server", "create_app", "engine", "feedback", "free_port", "loadtest", "safety"]
