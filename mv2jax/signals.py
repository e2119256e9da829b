"""Signals for the command, not for its worker processes.

A terminal's Ctrl-C (SIGINT), and a scheduler's `kill -TERM -PGID`, reach every process of the process group: the
data loader's worker processes as well as the command. A worker interrupted while it hands over a batch dies with a
traceback and leaves its shared memory behind. `ForwardToMain` blocks the signals in the calling thread, so every
thread and process started inside inherits the block (a signal mask survives fork and exec), and a thread of its own
waits for them and runs each one's Python handler in the main thread, as if it had been delivered there: the
command sees the signal, its workers never do. The command's own KeyboardInterrupt must not land halfway through
taking over a batch either: `sigint_deferred` holds it until such a section ends.

A pipe's reader (`| tee`, `| head`) gets the same Ctrl-C and may close first, and a command may outlive its reader
anyway; `tolerate_closed_pipes` makes writes to a closed stdout or stderr go nowhere instead of failing, so the
command still finishes what it was doing (saves its checkpoint) and exits with its own code.

Importing this module imports no JAX.
"""

from __future__ import annotations

import _thread
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from multiprocessing import resource_tracker
from typing import Any, TextIO

# For each forwarded signal, the `on_signal` of every ForwardToMain block it is inside, the innermost last.
_routes: dict[int, list[Callable[[int], None]]] = {}
# Signals sent by other processes (as opposed to faults of the thread itself, and the two that cannot be blocked).
_SYNCHRONOUS = {"SIGKILL", "SIGSTOP", "SIGSEGV", "SIGBUS", "SIGFPE", "SIGILL", "SIGTRAP", "SIGSYS", "SIGABRT"}
_ASYNCHRONOUS = {s for s in signal.valid_signals() if getattr(s, "name", "") not in _SYNCHRONOUS}


def can_forward() -> bool:
    """Whether signals can be blocked and waited for here: a POSIX system, called from the main thread."""
    return hasattr(signal, "pthread_sigmask") and threading.current_thread() is threading.main_thread()


class ForwardToMain:
    """Context manager: `signals` are blocked in the calling (main) thread and in every thread and process started
    inside, and each one that arrives runs its Python handler in the main thread at its next Python instruction
    (`_thread.interrupt_main`; two arrivals before that instruction run it once). Each signal needs a Python handler
    there (SIGINT has one by default: it raises KeyboardInterrupt); one still pending when the block ends is
    delivered then. `on_signal(signum)`, if given, is called instead, in a waiting thread, once per arrival. Nests:
    a signal goes to the innermost block that forwards it. A no-op where `can_forward()` is False."""

    def __init__(self, signals: Iterable[int], on_signal: Callable[[int], None] | None = None):
        self.signals = frozenset(signals)
        self.on_signal = on_signal or _thread.interrupt_main
        self._previous_mask: set | None = None
        self._waiter: threading.Thread | None = None
        self._stopping = False

    def __enter__(self) -> ForwardToMain:
        if not self.signals or not can_forward():
            return self
        # Starting multiprocessing's resource tracker unblocks SIGINT and SIGTERM in the thread that starts it (the
        # first worker's start would do so): start it before the block.
        resource_tracker.ensure_running()
        for signum in self.signals:
            _routes.setdefault(signum, []).append(self.on_signal)
        self._previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, self.signals)
        self._waiter = threading.Thread(target=self._wait, name="mv2jax-signals", daemon=True)
        self._waiter.start()  # after the block: it inherits it, so sigwait sees every one of the signals
        return self

    def _wait(self) -> None:
        # No signal is delivered to this thread but by sigwait: one meant for another block or handler (a SIGTERM
        # while only SIGINT is forwarded here) goes to a thread that runs its handler or default action.
        signal.pthread_sigmask(signal.SIG_BLOCK, _ASYNCHRONOUS)
        while True:
            signum = signal.sigwait(self.signals)
            if self._stopping:
                return
            _routes[signum][-1](signum)  # the innermost block's, whichever block's thread waited for it

    def __exit__(self, *exc: object) -> None:
        if self._waiter is None or self._previous_mask is None:
            return
        self._stopping = True
        signal.pthread_kill(self._waiter.ident, min(self.signals))  # wakes the waiter, which sees _stopping
        self._waiter.join()
        self._waiter = None
        signal.pthread_sigmask(signal.SIG_SETMASK, self._previous_mask)
        self._previous_mask = None
        for signum in self.signals:
            _routes[signum].pop()


@contextlib.contextmanager
def sigint_deferred() -> Iterator[None]:
    """A Ctrl-C (SIGINT) inside runs its handler (raises KeyboardInterrupt) when the block ends, not halfway: for a
    few lines that must not stop in the middle, e.g. taking over a shared-memory block and unlinking it. A second
    one inside runs it at once (the block may be stuck waiting). In the main thread; elsewhere (where no handler
    runs) a no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []

    def hold(signum: int, frame: Any) -> None:
        if held and callable(previous):
            previous(signum, frame)
        held.append(signum)

    previous = signal.signal(signal.SIGINT, hold)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if len(held) == 1 and callable(previous):
            previous(signal.SIGINT, None)


class _PipeSafeStream:
    """A text stream whose writes survive a closed pipe: on the first EPIPE its file descriptor is pointed at
    /dev/null (what the closed reader would have done with the text), so this and every later write succeed."""

    def __init__(self, stream: TextIO):
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._to_devnull()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._to_devnull()

    def _to_devnull(self) -> None:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, self._stream.fileno())
        os.close(devnull)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


@contextlib.contextmanager
def tolerate_closed_pipes() -> Iterator[None]:
    """While inside, `sys.stdout` and `sys.stderr` write to /dev/null once their reader has gone (see
    `_PipeSafeStream`) instead of raising BrokenPipeError."""
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _PipeSafeStream(sys.stdout), _PipeSafeStream(sys.stderr)  # type: ignore[assignment]
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved
