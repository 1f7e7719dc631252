"""A child process that runs calls for a host that must outlive them.

A Dask worker (``DaskExecutor(isolate=True)``) runs each task in a child of its own, so
that a task that kills its process (``os._exit``, a segfault, the OOM killer) costs the
child, not the worker, and a task that is cancelled or timed out can be stopped: the
child is killed and the worker thread that waited for it is free at once (Python cannot
stop a thread that runs someone's code; it can stop a process).

The child is started with :mod:`subprocess`, not :mod:`multiprocessing`: a Dask worker
started by a nanny is a *daemonic* process, and multiprocessing refuses to start children
from one. It is a fresh interpreter (never a fork of a host that has threads, sockets and
perhaps MPI state), given the host's ``sys.path`` first and then one call at a time on a
pipe: ``(function, args)`` pickled (``cloudpickle`` when it is installed, so that what the
host could pickle the child receives), the answer pickled back the same way. A third
pipe, whose writing end only the host holds, is the child's lifeline: when the host dies,
however it dies, a watcher thread in the child sees the end of it and exits at once.

The child leads a process group of its own (``start_new_session``): :meth:`Child.kill`
kills the group, so what a task started (``os.system("... &")``, a pool of its own) goes
with it instead of holding the answer pipe open, and the child's pipe ends are not
inherited by what it starts. A call that fails in the child (its value does not pickle)
comes back as :class:`ChildError`; the child lives on.

Threads: a :class:`Child` is used by one thread at a time (the one running a task on it);
:meth:`Child.kill` may come from any other (the Dask worker's loop, on a cancel).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping
from multiprocessing.connection import Connection
from typing import Any, Final

from ._worker import ORPHANED

__all__ = ["Child", "ChildDied", "ChildError", "main"]

_PROTO: Final = pickle.HIGHEST_PROTOCOL

try:  # what a Dask payload's pairs or a kept value may need (a Dask worker has it)
    import cloudpickle as _pickler  # type: ignore[import-untyped]
except ImportError:  # pragma: no cover (MPI without Dask: plain pickle is enough)
    _pickler = pickle


_HOME: Final = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _dumps(obj: Any) -> bytes:
    data: bytes = _pickler.dumps(obj, protocol=_PROTO)
    return data


class ChildDied(Exception):
    """The child ended before it answered (``sent``: it had the call when it died)."""

    def __init__(self, pid: int, exitcode: int | None, *, sent: bool, killed: bool) -> None:
        super().__init__(f"child pid {pid} ended with exit code {exitcode}")
        self.pid = pid
        self.exitcode = exitcode
        self.sent = sent
        self.killed = killed  # by :meth:`Child.kill` (a cancel), not by its task


class ChildError(Exception):
    """The call could not be made or answered (``text``: the child's traceback)."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


class Child:
    """One child process and the pipes to it (the host's side)."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        calls_r, calls_w = os.pipe()  # (os.pipe's ends are not inherited unless passed)
        answers_r, answers_w = os.pipe()
        life_r, life_w = os.pipe()
        try:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    # (taskvisor importable even where the host found it by a sys.path of
                    # its own making; main() then takes the host's whole sys.path)
                    f"import sys; sys.path.insert(0, {_HOME!r}); "
                    "from taskvisor._child import main; main()",
                    str(calls_r),
                    str(answers_w),
                    str(life_r),
                ],
                pass_fds=(calls_r, answers_w, life_r),
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # (a group of its own: kill() takes what it started)
                env=None if env is None else dict(env),
            )
        except BaseException:
            for fd in (calls_w, answers_r, life_w):
                os.close(fd)
            raise
        finally:  # the child's ends: closed here, so that its death is an EOF
            for fd in (calls_r, answers_w, life_r):
                os.close(fd)
        self.pid = self.proc.pid
        self._calls = Connection(calls_w, readable=False)
        self._answers = Connection(answers_r, writable=False)
        self._life = life_w  # closed by stop(): the child's lifeline ends
        self.killed = False
        self._calls.send_bytes(_dumps(list(sys.path)))

    def alive(self) -> bool:
        return self.proc.poll() is None

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` in the child (``fn`` importable there, by reference); raises
        :class:`ChildDied` if the child ends before it answers, :class:`ChildError` if the
        call could not be sent or its value could not come back."""
        try:
            data = _dumps((fn, args))
        except Exception as exc:
            raise ChildError(
                f"the call could not be pickled for the child process: {exc!r}"
            ) from None
        try:
            self._calls.send_bytes(data)
        except OSError:  # (a broken pipe: the child is gone)
            raise self._died(sent=False) from None
        try:
            answer = self._answers.recv_bytes()
        except (EOFError, OSError):
            raise self._died(sent=True) from None
        try:
            ok, value = pickle.loads(answer)
        except Exception as exc:
            raise ChildError(f"the child's answer could not be unpickled: {exc!r}") from None
        if not ok:
            raise ChildError(value)
        return value

    def _died(self, *, sent: bool) -> ChildDied:
        exitcode = self.proc.wait()
        self.close()
        return ChildDied(self.pid, exitcode, sent=sent, killed=self.killed)

    def kill(self) -> None:
        """Stop the child now, whatever it runs (any thread): its caller gets
        :class:`ChildDied` with ``killed`` set."""
        self.killed = True
        if self.proc.returncode is None:  # (not reaped: its pid is still its own)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)

    def close(self) -> None:
        for conn in (self._calls, self._answers):
            with contextlib.suppress(OSError):
                conn.close()
        if self._life >= 0:
            with contextlib.suppress(OSError):
                os.close(self._life)
            self._life = -1

    def stop(self, wait: float = 10.0) -> None:
        """End an idle child: its pipes close and it returns (killed if it does not)."""
        self.close()
        try:
            self.proc.wait(wait)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def main() -> None:
    """The child: run each call received, send back its value; return at the end of the
    calls pipe (the host closed it). Exits at once when the lifeline ends (host gone)."""
    calls_fd, answers_fd, life_fd = (int(a) for a in sys.argv[1:4])
    for fd in (calls_fd, answers_fd, life_fd):  # (what a task starts does not get them)
        os.set_inheritable(fd, False)

    def lifeline() -> None:
        with contextlib.suppress(OSError):
            while os.read(life_fd, 1):
                pass
        with contextlib.suppress(OSError):  # the host is gone: so is what the task started
            os.killpg(0, signal.SIGKILL)
        os._exit(ORPHANED)

    threading.Thread(target=lifeline, name="taskvisor-lifeline", daemon=True).start()
    calls = Connection(calls_fd, writable=False)
    answers = Connection(answers_fd, readable=False)
    try:
        sys.path[:] = pickle.loads(calls.recv_bytes())
    except EOFError:
        return
    with contextlib.suppress(KeyboardInterrupt):
        while True:
            try:
                data = calls.recv_bytes()
            except EOFError:
                return
            try:
                fn, args = pickle.loads(data)
                value = fn(*args)  # (the callers' functions answer errors, never raise)
                out = _dumps((True, value))
            except Exception:
                import traceback

                out = _dumps((False, traceback.format_exc()))
            for stream in (sys.stdout, sys.stderr):  # what the task printed, now
                with contextlib.suppress(Exception):
                    stream.flush()
            answers.send_bytes(out)
