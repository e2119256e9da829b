"""`mv2jax.signals`: a signal forwarded to the main thread never reaches the processes started meanwhile (data
workers), nested blocks hand each arrival to the innermost once, a Ctrl-C inside `sigint_deferred` waits for its
end (a second one does not), and writes to a closed pipe go nowhere."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mv2jax.signals import ForwardToMain, sigint_deferred
from tests.polling import within

REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=str(REPO))


def _python(code: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, env=ENV, text=True, timeout=120, **kwargs
    )


def test_a_worker_process_started_inside_never_sees_the_signals():
    """In a fresh interpreter: multiprocessing's resource tracker, started with the first worker, unblocks SIGINT
    and SIGTERM in the thread that starts it; the block must hold for that worker and every later one."""
    code = """
        import multiprocessing, os, signal, time
        from mv2jax.signals import ForwardToMain
        if __name__ == "__main__":
            spawn = multiprocessing.get_context("spawn")
            with ForwardToMain([signal.SIGINT, signal.SIGTERM]):
                workers = [spawn.Process(target=time.sleep, args=(30,)) for _ in range(2)]
                for w in workers:
                    w.start()
                time.sleep(1.0)  # past the workers' interpreter start
                for w in workers:
                    os.kill(w.pid, signal.SIGINT)
                    os.kill(w.pid, signal.SIGTERM)
                time.sleep(1.0)
                print([w.exitcode for w in workers], sorted(signal.pthread_sigmask(signal.SIG_BLOCK, [])))
                for w in workers:
                    w.kill()
                    w.join()
    """
    proc = _python(code, capture_output=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[0] == f"[None, None] {sorted([signal.SIGINT, signal.SIGTERM])}", proc.stdout
    assert "Traceback" not in proc.stderr and "KeyboardInterrupt" not in proc.stderr, proc.stderr


def test_ctrl_c_is_a_keyboard_interrupt_in_the_main_thread():
    with pytest.raises(KeyboardInterrupt):
        with ForwardToMain([signal.SIGINT]):
            os.kill(os.getpid(), signal.SIGINT)
            within(5, lambda: False)
            pytest.fail("no KeyboardInterrupt")
    assert signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, [])


def test_each_arrival_goes_once_to_the_innermost_block():
    """In a fresh interpreter, with no thread started before the blocks (such a thread, not blocking the signals,
    may be the one the kernel delivers them to: their Python handlers run then, as without the blocks)."""
    code = """
        import os, signal, time
        from mv2jax.signals import ForwardToMain

        def within(seconds, condition):
            deadline = time.monotonic() + seconds
            while not condition() and time.monotonic() < deadline:
                time.sleep(0.01)

        outer, inner = [], []
        with ForwardToMain([signal.SIGINT], on_signal=outer.append):
            with ForwardToMain([signal.SIGINT, signal.SIGTERM], on_signal=inner.append):
                for n, sig in enumerate((signal.SIGINT, signal.SIGTERM, signal.SIGINT), 1):
                    os.kill(os.getpid(), sig)
                    within(5, lambda: len(inner) == n)
            os.kill(os.getpid(), signal.SIGINT)
            within(5, lambda: len(outer) == 1)
        time.sleep(0.1)
        print([signal.Signals(s).name for s in inner], [signal.Signals(s).name for s in outer])
    """
    proc = _python(code, capture_output=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "['SIGINT', 'SIGTERM', 'SIGINT'] ['SIGINT']\n", proc.stdout


def test_a_ctrl_c_inside_sigint_deferred_is_raised_when_the_block_ends():
    finished = False
    with pytest.raises(KeyboardInterrupt):
        with ForwardToMain([signal.SIGINT]):
            with sigint_deferred():
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.3)
                finished = True
            pytest.fail("no KeyboardInterrupt")
    assert finished


def test_a_second_ctrl_c_inside_sigint_deferred_is_raised_at_once():
    """The block may be stuck (a data worker that never answers): pressing Ctrl-C again gets out."""
    with pytest.raises(KeyboardInterrupt):
        with ForwardToMain([signal.SIGINT]):
            with sigint_deferred():
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.3)
                os.kill(os.getpid(), signal.SIGINT)
                within(5, lambda: False)
                pytest.fail("no KeyboardInterrupt")


def test_writes_to_a_closed_pipe_go_nowhere_and_the_command_goes_on():
    code = """
        import sys
        from mv2jax.signals import tolerate_closed_pipes
        with tolerate_closed_pipes():
            for i in range(100000):
                print(i, flush=i % 1000 == 0)
            print("done", file=sys.stderr)
    """
    proc = subprocess.run(
        f"{sys.executable} -c {shlex.quote(textwrap.dedent(code))} | head -1; exit ${{PIPESTATUS[0]}}",
        shell=True,
        executable="bash",
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "0\n" and proc.stderr == "done\n", proc.stderr
