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

Process model: a fresh interpreter (``subprocess``, running ``_child_main`` of this module) with one
multiprocessing Connection (a socket pair) between them. A fresh interpreter, not a fork: none of
the parent's threads (torch's thread pool, Jupyter's) or held locks are copied into a half-working
child. Our own small entry point, not multiprocessing's "spawn": spawn re-runs the parent's main
script in the child (a learner's script without an ``if __name__ == "__main__"`` guard would train
twice; a script read from stdin cannot start a child at all), while this child imports only
this module and the host's. The Connection pickles numpy arrays and exceptions and frames messages;
the host is any importable callable (pickled by reference), so a test can pass one that crashes.
POSIX only, like the rest of the course's process handling (``pass_fds``, process groups).

Protocol (pickled tuples over the one Connection, one exchange at a time): the parent first sends
(host, args), the child answers ("ready", None) once the host is built, then

    parent -> child   ("call", method, args)   ("stream", method, args)   ("next",)   ("close",)
    child -> parent   ("ok", value)   ("item", value)   ("end", None)   ("error", exception)

A stream sends one item per ("next",); any other message ends it, so a generator the caller
abandons leaves nothing behind in the pipe.

Death: the child holds the only other end of the socket, so when it dies, by a signal or
otherwise, the parent's end reads EOF at once; the parent also polls the process every second it
waits, and reads its exit code (-N after signal N). A dead child is noticed, never waited for.
``timeout_s`` bounds each reply of a live child (None: as long as it lives). The child ends with
its parent: EOF on its pipe when idle, a thread that sees its parent change when busy; it ignores
Ctrl+C (Jupyter's interrupt reaches the whole process group; the parent decides).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable
from multiprocessing.connection import Connection, wait

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
        return self.process is not None and self.process.poll() is None

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
        ours, theirs = multiprocessing.Pipe()  # a socket pair: pickled, framed messages both ways
        argv = [sys.executable, "-c", _CHILD, json.dumps([str(p) for p in sys.path]), str(theirs.fileno()),
                str(os.getpid())]
        self.process = subprocess.Popen(argv, pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL)
        theirs.close()  # the child holds the only other end now, so its death closes the pipe
        self.conn = ours
        self._finalizer = weakref.finalize(self, _stop, self.process, ours)  # a runner dropped unclosed
        try:
            ours.send((self.host, self.args))
        except BaseException:  # a host that does not pickle (a lambda, a local class)
            self._end(grace_s=0)
            raise
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
            if wait([self.conn], left):
                return self.conn.recv()  # EOFError if the child died with nothing more to say
            if self.process.poll() is not None:  # gone, though its end of the pipe did not say so
                raise self._died()
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} did not answer within {self.timeout_s:.0f} s, so its process "
                                   "was stopped.")

    def _died(self) -> NativeCrash:
        try:
            exitcode = self.process.wait(5)  # -N: killed by signal N
        except subprocess.TimeoutExpired:  # its pipe broke, yet it runs: stop it
            exitcode = None
        self._end(grace_s=0)
        self.crash = NativeCrash(self.describe(exitcode), exitcode)
        return self.crash

    def _end(self, grace_s: float) -> None:
        """Stop the child (asking first if GRACE_S > 0); the next call starts a new one, unless it crashed."""
        if self.process is not None and self._finalizer.detach():
            _stop(self.process, self.conn, grace_s)
        self.process = self.conn = None


def _stop(process: subprocess.Popen, conn, grace_s: float = 5.0) -> None:
    """Ask the child to end, then insist: SIGTERM, then SIGKILL; always reap it."""
    try:
        if grace_s and process.poll() is None:
            conn.send(("close",))
    except OSError:
        pass
    for insist in (None, process.terminate, process.kill):
        if process.poll() is None:
            if insist is not None:
                insist()
            try:
                process.wait(grace_s if insist is None else 2)
            except subprocess.TimeoutExpired:
                pass
    conn.close()


# ---------------------------------------------------------------------- the child's side

# The child's whole program: the parent's import path first (a test's host lives in tests/), then this module.
_CHILD = ("import json, sys; sys.path[:] = json.loads(sys.argv[1]); "
          "from course_lib.native import _child_main; _child_main(int(sys.argv[2]), int(sys.argv[3]))")


def _child_main(fd: int, parent_pid: int) -> None:
    """The child's main loop: build the host, then answer messages until "close" or the parent's end."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Jupyter's interrupt reaches the process group: the parent decides
    threading.Thread(target=_follow_parent, args=(parent_pid,), daemon=True).start()
    conn = Connection(fd)
    try:
        built = conn.recv()  # (host, args); unpickling imports the host's module
    except (EOFError, OSError):  # the parent is gone already
        return
    except Exception as error:  # the host's module does not import here
        _reply(conn, "error", error)
        return
    try:
        obj = built[0](*built[1])
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
