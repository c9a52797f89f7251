"""Multi-process runs that fail cleanly: a lost process ends the run everywhere with one line.

A ``jax.distributed`` run is one program over every process's devices, so a process that dies
(a preempted host, a killed task, an out-of-memory kill) stops the run on all the others too.
JAX itself ends the survivors, but as a crash: process 0 holds the coordination service, and
when it dies the others abort at once (SIGABRT, a native stack trace and Python's
"Fatal Python error" dump); when another process dies, a survivor's next collective fails
(on CPU the Gloo transport raises "Connection reset by peer" at once), or, where it would wait
forever (a barrier, a GPU collective), the coordination service declares the silent process
dead after the heartbeat timeout (``jax.distributed.initialize(heartbeat_timeout_seconds=...)``,
100 s by default; ``--heartbeat_timeout`` in the runner) and aborts every survivor. So a loss
ends the run everywhere within the heartbeat timeout, and here it ends it with one line:

* ``supervise`` runs the real process (the *worker*) as a child and relays its output; when
  JAX aborts the worker, it drops the native dump and prints one line naming the loss and how
  to resume, and exits with ``EXIT_RESUMABLE``. A worker dies with its supervisor (Linux), so
  killing the supervisor is losing the process;
* ``exit_on_failure`` in the worker turns a failed collective (or any other error of a
  distributed run) into that line and an immediate ``os._exit``: a normal exit would first
  wait for the lost process at JAX's shutdown barrier and abort there;
* ``preemption_point`` turns a preemption notice (SIGTERM, which JAX's preemption service
  catches in distributed runs) into a checkpoint at a step every process agrees on, then a
  clean exit with ``EXIT_RESUMABLE``;
* ``sync`` and ``gather`` meet the other processes at the coordination service (a barrier, a
  key-value exchange) rather than in a device collective: on CPU, Gloo's first collective
  fails when the processes arrive more than 30 s apart, as they may while some compile.

In a single process every helper is trivial, so code written for many processes runs on one.

Examples:
  >>> from fljax import multihost
  >>> multihost.preemption_point(1)  # every process reached a step to stop at after a SIGTERM?
  False
  >>> multihost.gather("answer", "42")  # every process's value, in process order
  ['42']
  >>> multihost.lost_line("process 1 stopped sending heartbeats", "process 0 of 2", "restart to resume")
  'error: the run lost a process: process 1 stopped sending heartbeats (seen by process 0 of 2); restart to resume'
"""

from __future__ import annotations

import contextlib
import itertools
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import traceback
from typing import Callable, Optional

import jax

EXIT_RESUMABLE = 75
"""Exit status of a run stopped by a lost process or a preemption: rerun it to resume
(``EX_TEMPFAIL``, "try again")."""

SUPERVISOR_ENV = "FLJAX_SUPERVISOR_PID"
"""Set in a supervised worker's environment: its supervisor's process id."""

LOST = "error: the run lost a process"
"""How the one line about a lost process starts (worker and supervisor alike)."""

INTERRUPTED = "interrupted: "
"""How the one line about a preempted run starts."""

# JAX's abort of a survivor: a native FATAL line, then a stack trace and Python's fault dump.
_JAX_FATAL = re.compile(r"JAX distributed service detected fatal errors")
# Native log lines (absl/glog format: "E1128 07:26:02.160665   25650 file.cc:123] ...").
_NATIVE_LOG = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S+:\d+\]")
# Errors that mean the other end of a collective or of the coordination service is gone.
_PEER_GONE = re.compile(
    r"(?i)connection (reset|closed|refused)|socket closed|broken pipe|peer|heartbeat|"
    r"unavailable|failed to send rpc|barrier"
)
_HOLD_SECONDS = 2.0  # how long the supervisor holds native log lines back (JAX aborts within ms of its warnings)


class Preempted(Exception):
    """A preemption notice stopped the run at a block boundary, after a checkpoint (if any)."""


def process_label() -> str:
    """``process i of n`` (this process in a ``jax.distributed`` run)."""
    try:
        return f"process {jax.process_index()} of {jax.process_count()}"
    except Exception:  # noqa: BLE001 - in an error message: JAX may be in no state to answer
        return f"the process on {os.uname().nodename}"


def lost_line(what: str, seen_by: str, hint: str) -> str:
    """The one line about a lost process: what happened, who saw it, how to resume."""
    return f"{LOST}: {what} (seen by {seen_by}); {hint}"


def is_supervised() -> bool:
    """Whether this process is a worker started by ``supervise``."""
    return SUPERVISOR_ENV in os.environ


def die_with_supervisor() -> None:
    """In a supervised worker: ask Linux to SIGKILL this process when its supervisor dies
    (``PR_SET_PDEATHSIG``), so that losing the supervisor loses the process, as on a real host."""
    if not is_supervised() or not sys.platform.startswith("linux"):
        return
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != int(os.environ[SUPERVISOR_ENV]):  # the supervisor died before the call
        os._exit(EXIT_RESUMABLE)


def _cause(report: str) -> Optional[str]:
    """What JAX's report of a failure says happened to the other processes, in a few words;
    ``None`` when it names no cause."""
    if re.search(r"(?i)failed to send rpc to coordination service|socket closed|leader task", report):
        return "process 0, which runs the coordination service, is gone"
    gone = re.search(r"Task (\d+) heartbeat timeout", report) or re.search(
        r"stopped sending heartbeats\):\s*(\d+)", report
    )
    if gone:
        return f"process {gone.group(1)} stopped sending heartbeats"
    closed = re.search(r"(Gloo [\w ]+? failed).*?(Connection (?:reset|closed) by peer)", report)
    if closed:
        return f"another process closed its connections ({closed.group(1)}: {closed.group(2)})"
    return None


def supervise(hint: Callable[[], str], process: Optional[int] = None, command: Optional[list] = None) -> int:
    """Runs this program again as a worker (``command``: by default the exact command line of
    this process, ``sys.orig_argv``) and returns its exit status, relaying its output. SIGTERM,
    SIGHUP, SIGUSR1 and SIGUSR2 are passed on to the worker (SIGINT from a terminal reaches
    it directly). When JAX aborts the worker because another process was lost, the abort's
    native dump is dropped (with the native log lines just before it) and one line is printed
    instead (``lost_line``; ``hint()`` says how to resume), with status ``EXIT_RESUMABLE``.
    A worker killed by another signal gives status 128 + the signal and a line saying so."""
    command = list(command or [sys.executable, *sys.orig_argv[1:]])
    env = dict(os.environ, **{SUPERVISOR_ENV: str(os.getpid())})
    worker = subprocess.Popen(command, env=env, stderr=subprocess.PIPE)
    forwarded = (signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)
    previous = {s: signal.signal(s, lambda signum, frame: worker.send_signal(signum)) for s in forwarded}
    previous[signal.SIGINT] = signal.signal(signal.SIGINT, signal.SIG_IGN)
    lines: queue.Queue = queue.Queue()
    reader = threading.Thread(
        target=lambda: [lines.put(line) for line in iter(worker.stderr.readline, b"")] + [lines.put(None)], daemon=True
    )
    reader.start()
    out = sys.stderr.buffer

    def write(chunk):
        out.writelines(chunk)
        out.flush()

    held, since = [], 0.0  # a native log line and what follows it, held back for _HOLD_SECONDS
    report, reported = [], False  # JAX's abort report; whether the worker printed the summary itself
    try:
        while True:
            if held and time.monotonic() - since >= _HOLD_SECONDS:  # not the prelude of an abort
                write(held)
                held = []
            try:
                line = lines.get(timeout=since + _HOLD_SECONDS - time.monotonic() if held else None)
            except queue.Empty:
                continue
            if line is None:
                break
            text = line.decode(errors="replace")
            if text.startswith((LOST, INTERRUPTED)):  # the summary: the held lines were its details
                reported, held = True, []
                write([line])
            elif report or _JAX_FATAL.search(text):  # JAX's abort: keep it for the summary, show nothing
                report.append(text)
                held = []
            elif held or _NATIVE_LOG.match(text):
                since = since if held else time.monotonic()
                held.append(line)
            else:
                write([line])
        status = worker.wait()
        if not (reported or report):  # else they were JAX's account of the failure just summarized
            write(held)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        worker.stderr.close()
    if status >= 0 and not report:
        return status
    who = f"process {process}" if process is not None else f"the process on {os.uname().nodename}"
    if report:  # JAX aborted the worker (it may have ended itself first, seeing the same loss)
        if not reported:
            what = _cause("".join(report)) or "JAX's distributed service reported a failed process"
            print(lost_line(what, who, hint()), file=sys.stderr, flush=True)
        return EXIT_RESUMABLE
    if not reported:
        print(
            f"error: {who}: the worker was killed by {signal.Signals(-status).name}; {hint()}",
            file=sys.stderr,
            flush=True,
        )
    return 128 - status


_ENDING = threading.Lock()


def _multi_process() -> bool:
    try:
        return jax.process_count() > 1
    except Exception:  # noqa: BLE001 - JAX in no state to answer: not a run to end by hand
        return False


def _peer_gone(e: BaseException) -> bool:
    """Whether ``e`` is JAX's report of a failed collective or barrier: another process is gone."""
    return isinstance(e, jax.errors.JaxRuntimeError) and bool(_PEER_GONE.search(str(e)))


def _end(e: BaseException, hint: Callable[[], str]) -> None:
    """Ends a worker of a multi-process run on ``e``: one line (a lost peer: ``EXIT_RESUMABLE``;
    Ctrl-C: 130) or the traceback and a line (anything else: 1), then ``os._exit`` at once (the
    first failing thread wins)."""
    _ENDING.acquire()
    status = 1
    try:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        if _peer_gone(e):
            what = _cause(str(e)) or f"lost contact with another process ({first[:200]})"
            message = lost_line(what, process_label(), hint())
            status = EXIT_RESUMABLE
        elif isinstance(e, KeyboardInterrupt):
            message, status = f"{INTERRUPTED}Ctrl-C (SIGINT) on {process_label()}; {hint()}", 130
        else:
            message = (
                "".join(traceback.format_exception(e)).rstrip()
                + f"\nerror: {process_label()} failed ({first}); {hint()}"
            )
        sys.stdout.flush()
        sys.stderr.flush()
        os.write(sys.stderr.fileno(), (message + "\n").encode())  # one write: no native log line inside it
    finally:
        os._exit(status)


@contextlib.contextmanager
def exit_on_failure(hint: Callable[[], str]):
    """In a worker of a multi-process run: an exception and Ctrl-C end the process at once with
    ``os._exit`` (JAX's normal exit would wait for a lost process at its shutdown barrier and
    abort), and so does a lost process seen by another thread (e.g. a checkpoint's background
    save). A failed collective or barrier (``JaxRuntimeError``) whose message says a peer is
    gone gives ``lost_line`` and ``EXIT_RESUMABLE``; any other error its traceback, a line, and
    status 1. In a single-process run errors propagate as usual."""
    previous = threading.excepthook

    def thread_failed(args):
        if _peer_gone(args.exc_value) and _multi_process():
            _end(args.exc_value, hint)
        previous(args)

    threading.excepthook = thread_failed
    try:
        yield
    except (Exception, KeyboardInterrupt) as e:  # noqa: BLE001 - every failure of a distributed worker ends it now
        if not _multi_process():
            raise
        _end(e, hint)
    finally:
        threading.excepthook = previous


_SYNCS = itertools.count()
SYNC_TIMEOUT_SECONDS = 3600


def _coordination_client():
    """JAX's client of the coordination service (``None`` outside a ``jax.distributed`` run), as
    orbax uses it for its barriers."""
    from jax._src import distributed

    return getattr(distributed.global_state, "client", None) if jax.process_count() > 1 else None


def sync(label: str) -> None:
    """Waits until every process of a multi-process run arrives here, at a barrier of JAX's
    coordination service (no device collective; nothing in a single-process run). Called right
    before a run's first collectives: on CPU, Gloo gives processes only 30 s to meet at their
    first collective, less than a loaded machine may need to compile for some processes and
    not others (a lost process still ends the wait, through the heartbeat timeout)."""
    client = _coordination_client()
    if client is not None:
        client.wait_at_barrier(f"fljax-{next(_SYNCS)}-{label}", timeout_in_ms=SYNC_TIMEOUT_SECONDS * 1000)


def gather(label: str, value: str) -> list[str]:
    """Every process's ``value``, in process order, through the coordination service's
    key-value store (no device collective, nothing to compile); every process must call it
    with the same ``label`` in the same order. ``[value]`` in a single-process run."""
    client = _coordination_client()
    if client is None:
        return [value]
    key = f"fljax-{next(_SYNCS)}-{label}"
    client.key_value_set(f"{key}/{jax.process_index()}", value)
    return [
        client.blocking_key_value_get(f"{key}/{i}", SYNC_TIMEOUT_SECONDS * 1000) for i in range(jax.process_count())
    ]


def preemption_point(step: int) -> bool:
    """Whether every process has reached the step at which to checkpoint and stop after a
    preemption notice (SIGTERM to any process; ``multihost_utils.reached_preemption_sync_point``).
    All processes must call it with the same increasing ``step``; always False in a
    single-process run or with JAX's preemption service off."""
    if jax.process_count() == 1:
        return False
    from jax.experimental import multihost_utils

    try:
        return bool(multihost_utils.reached_preemption_sync_point(step))
    except RuntimeError:  # jax_enable_preemption_service=False
        return False
