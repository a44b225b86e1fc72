"""Run native code where its crash cannot take us down: an object in a child process, called over a pipe.

llama.cpp is compiled on the learner's machine for that machine's CPU, and on some CPUs such a build
dies by a signal (SIGSEGV, SIGILL) at its first matrix product. In the notebook's own process that
kills the Jupyter kernel without a word. Here the object lives in a child process; the parent sends
it method calls and gets back results, the child's Python exceptions, or a ``NativeCrash`` naming
the signal the child died of, and goes on.

    child = Child(Host, ("model.gguf",))      # the child builds Host("model.gguf") and says "ready"
    child.call("logits", [1, 2, 3])           # the method's result, pickled back
    for token in child.stream("stream", ids, 8): ...   # a generator method, one item per round trip
    child.close()

Process model: ``multiprocessing`` with the "spawn" start method. Spawn, not fork: a fresh
interpreter, so none of the parent's threads (torch's thread pool, Jupyter's) or held locks are
copied into a half-working child, and it behaves the same on Linux, macOS and Windows.
multiprocessing rather than our own subprocess protocol: its Pipe pickles numpy arrays and
exceptions, a Process has a sentinel to wait on and an exit code that is -N after signal N, and the
host is any importable callable, so a test can pass one that crashes for real.

Protocol (tuples over one duplex Pipe, one exchange at a time):

    parent -> child   ("call", method, args)   ("stream", method, args)   ("next",)   ("close",)
    child -> parent   ("ready", None)  ("ok", value)  ("item", value)  ("end", None)  ("error", exception)

A stream sends one item per ("next",); any other message ends it, so a generator the caller
abandons leaves nothing behind in the pipe.

Death: the parent always waits on the pipe *and* the process sentinel (in ticks of a second), so a
dead child is noticed the moment it dies, never waited for. ``timeout_s`` bounds each reply of a
live child (None: as long as it lives). The child ends with its parent: EOF on its pipe when idle,
a thread that sees its parent change when busy; it ignores Ctrl+C (the parent decides).
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
import threading
import time
import weakref
from collections.abc import Callable
from multiprocessing.connection import wait

TICK_S = 1.0  # how often a waiting parent wakes up (for the deadline; death wakes it at once)


class NativeCrash(RuntimeError):
    """The child process died (killed by a signal such as SIGSEGV, or any other exit) during our work."""

    def __init__(self, message: str, exitcode: int | None = None):
        super().__init__(message)
        self.exitcode = exitcode

    @property
    def signal(self) -> int | None:
        """The signal number that killed the child, or None if it exited by itself."""
        return -self.exitcode if self.exitcode is not None and self.exitcode < 0 else None

    def __reduce__(self):
        return type(self), (str(self), self.exitcode)


def death(exitcode: int | None) -> str:
    """How a process ended, for a sentence: "signal 11, SIGSEGV" or "exit code 3"."""
    if exitcode is None:
        return "no exit code"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = "unknown signal"
        return f"signal {-exitcode}, {name}"
    return f"exit code {exitcode}"


class Child:
    """HOST(*ARGS) built and kept in a child process; ``call`` and ``stream`` run its methods there.

    DESCRIBE(exitcode) -> the sentence of the ``NativeCrash`` raised when the child dies. After a
    death every call raises it again (a crash on this CPU would repeat); after an interrupt or a
    timeout the child is stopped and the next call starts a new one.
    """

    def __init__(self, host: Callable, args: tuple = (), describe: Callable[[int | None], str] | None = None,
                 timeout_s: float | None = None, name: str = "native code"):
        self.host, self.args, self.timeout_s, self.name = host, tuple(args), timeout_s, name
        self.describe = describe or (lambda exitcode: f"{name} crashed ({death(exitcode)}).")
        self.crash: NativeCrash | None = None
        self.process = self.conn = None
        self._turn = 0  # bumped by every request: a stream left behind by a newer call cannot resume
        self._lock = threading.RLock()  # one exchange on the pipe at a time
        self._start()

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.is_alive()

    def call(self, method: str, *args):
        """METHOD(*ARGS) on the host, in the child; its result, or its exception raised here."""
        with self._lock:
            self._turn += 1
            return self._exchange(("call", method, args))[1]

    def stream(self, method: str, *args):
        """Iterate the host's generator METHOD(*ARGS): each item crosses the pipe when asked for."""
        with self._lock:
            self._turn += 1
            turn = self._turn
            kind, value = self._exchange(("stream", method, args))
        while kind == "item":
            yield value
            with self._lock:
                if self._turn != turn:
                    raise RuntimeError(f"{self.name}: this stream was ended by a later call")
                kind, value = self._exchange(("next",))

    def close(self) -> None:
        """End the child process (a stream left open just ends there). Safe to call twice."""
        with self._lock:
            self._end(grace_s=5.0)

    # ------------------------------------------------------------------ the parent's side of the pipe

    def _start(self) -> None:
        context = multiprocessing.get_context("spawn")
        ours, theirs = context.Pipe()
        self.process = context.Process(target=_serve, args=(theirs, self.host, self.args, os.getpid()),
                                       name=f"{self.name} (course_lib.native)", daemon=True)
        self.process.start()
        theirs.close()  # the child holds the only other end now, so its death closes the pipe
        self.conn = ours
        self._finalizer = weakref.finalize(self, _stop, self.process, ours)  # a runner dropped unclosed
        self._exchange(None)  # wait for "ready" (the host built) or its error

    def _exchange(self, message):
        """Send MESSAGE (None: send nothing) and return the reply; raise the child's error or its death."""
        if self.crash is not None:
            raise NativeCrash(str(self.crash), self.crash.exitcode)
        if self.process is None:
            self._start()
        try:
            if message is not None:
                self.conn.send(message)
            kind, value = self._receive()
        except TimeoutError:  # (an OSError, but the child lives: stopped, not a crash)
            self._end(grace_s=0)
            raise
        except (OSError, EOFError):  # a broken pipe: the child is gone
            raise self._died() from None
        except BaseException:  # Ctrl+C: its reply would arrive out of turn, so stop it
            if self.crash is None:
                self._end(grace_s=0)
            raise
        if kind == "error":
            if message is None:  # the host could not be built: this child is done
                self.close()
            raise value
        return kind, value

    def _receive(self):
        deadline = None if self.timeout_s is None else time.monotonic() + self.timeout_s
        while True:
            left = TICK_S if deadline is None else max(0.0, min(TICK_S, deadline - time.monotonic()))
            ready = wait([self.conn, self.process.sentinel], left)
            if self.conn in ready:
                return self.conn.recv()  # EOFError if the child died with nothing more to say
            if ready:  # the sentinel alone: the child is gone
                raise self._died()
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} did not answer within {self.timeout_s:.0f} s, so its process "
                                   "was stopped.")

    def _died(self) -> NativeCrash:
        self.process.join(5)
        exitcode = self.process.exitcode
        self._end(grace_s=0)
        self.crash = NativeCrash(self.describe(exitcode), exitcode)
        return self.crash

    def _end(self, grace_s: float) -> None:
        """Stop the child (asking first if GRACE_S > 0); the next call starts a new one, unless it crashed."""
        if self.process is not None and self._finalizer.detach():
            _stop(self.process, self.conn, grace_s)
        self.process = self.conn = None


def _stop(process, conn, grace_s: float = 5.0) -> None:
    """Ask the child to end, then insist: SIGTERM, then SIGKILL."""
    try:
        if grace_s and process.is_alive():
            conn.send(("close",))
    except OSError:
        pass
    process.join(grace_s)
    for insist in (process.terminate, process.kill):
        if process.is_alive():
            insist()
            process.join(2)
    conn.close()


# ---------------------------------------------------------------------- the child's side


def _serve(conn, host, args, parent_pid: int) -> None:
    """The child's main loop: build the host, then answer messages until "close" or the parent's end."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Jupyter's interrupt reaches the process group: the parent decides
    threading.Thread(target=_follow_parent, args=(parent_pid,), daemon=True).start()
    try:
        obj = host(*args)
    except Exception as error:
        _reply(conn, "error", error)
        return
    _reply(conn, "ready", None)
    message = _next(conn)
    while message is not None and message[0] != "close":
        message = _answer(conn, obj, message)


def _answer(conn, obj, message):
    """Answer one request; return the message after it (a stream reads it to know whether to go on)."""
    kind, *request = message
    if kind not in ("call", "stream"):
        _reply(conn, "error", RuntimeError(f"unexpected message {kind!r} (no stream is open)"))
        return _next(conn)
    method, args = request
    try:
        result = getattr(obj, method)(*args)
        if kind == "call":
            _reply(conn, "ok", result)
            return _next(conn)
        for item in result:
            _reply(conn, "item", item)
            following = _next(conn)
            if following != ("next",):
                return following  # the parent moved on: this stream is over
        _reply(conn, "end", None)
    except Exception as error:
        _reply(conn, "error", error)
    return _next(conn)


def _next(conn):
    try:
        return conn.recv()
    except (EOFError, OSError):  # the parent closed the pipe or died
        return None


def _reply(conn, kind: str, value) -> None:
    if kind == "error":
        try:  # an exception that cannot cross the pipe becomes a RuntimeError with the same words
            pickle.loads(pickle.dumps(value))
        except Exception:
            value = RuntimeError(f"{type(value).__name__}: {value}")
    try:
        conn.send((kind, value))
    except OSError:  # the parent is gone: nobody to answer
        os._exit(0)
    except Exception as error:  # a result that does not pickle
        conn.send(("error", RuntimeError(f"the result of type {type(value).__name__} could not be sent back: {error}")))


def _follow_parent(parent_pid: int) -> None:
    """End this process when its parent has ended (even while the host is busy in native code)."""
    while os.getppid() == parent_pid:
        time.sleep(1.0)
    os._exit(0)
