"""The watchdog of :func:`fundl.distributed.world`: no rank waits forever in a collective.

A collective (``Allreduce``...) returns only when every rank of the
communicator has called it.  A rank that never does -- it ran out of batches
and finished its script, it is in another collective, it computes forever --
leaves the others blocked, and ``mpiexec`` with them.  With ``dist.world()``
each rank runs a watchdog thread beside its main thread, and every collective
fundl issues goes through :func:`collective`, which tells the watchdog which
one the rank waits in (a label such as ``"the loss reduction"``), since when,
and its position in the sequence of fundl's collectives on ``COMM_WORLD``
(every rank calls them in the same order, so the position names the same call
on every rank).  The collective itself is the plain blocking MPI call:
nothing is added to it, and the watchdog's own messages travel on a duplicate
of ``COMM_WORLD`` (``ctl``), point to point, only when something is wrong.

The watchdog (waking every ``POLL`` seconds) ends the job with a message on
every rank, within a bounded time, when:

- a rank finished its script (an ``atexit`` hook announces it, with the number
  of collectives it completed and of training steps it took) and this rank
  waits in a collective that the finished rank never joined: at once;
- this rank and another one wait in *different* collectives at the same
  position of the sequence (each announces where it waits after ``PROBE``
  seconds): a mismatch, e.g. a rank that ran fewer steps and went on to
  ``evaluate``; within ``PROBE`` seconds;
- this rank has waited ``timeout`` seconds in one collective (default 600,
  ``dist.world(timeout=)`` or the environment variable ``FUNDL_MPI_TIMEOUT``):
  the other ranks are asked where they are, and the message lists them.

On failure (these, or an uncaught exception on any rank, see
:func:`fail`), the rank prints the reason and every rank's state to stderr,
sends the reason to the other ranks, whose watchdogs print it too and
acknowledge, and calls ``MPI.COMM_WORLD.Abort(1)`` after the
acknowledgements (or ``GRACE`` seconds): ``mpiexec`` ends every process and
exits non-zero.  At the end of a script every rank waits for the others to
end theirs (as ``MPI_Finalize`` would); ranks that took different numbers of
training steps are an error then too.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from mpi4py import MPI

__all__ = ["Watchdog", "collective", "install", "active", "DEFAULT_TIMEOUT"]

#: seconds one collective may wait before the job is ended (generous: a slow rank is normal)
DEFAULT_TIMEOUT = 600.0
POLL = 0.1      # the watchdog wakes this often (seconds)
PROBE = 2.0     # a rank waiting this long in one collective tells the others where it waits
GRACE = 3.0     # a failing rank waits this long for the others to print before it aborts
ASK = 1.0       # how long to wait for the other ranks' answers to "where are you?"

_EXIT, _WAIT, _ASK, _STATUS, _FAIL, _ACK = range(1, 7)

_watchdog: Optional["Watchdog"] = None


def active() -> Optional["Watchdog"]:
    """The installed watchdog (``None`` without ``dist.world()`` or on one rank)."""
    return _watchdog


def collective(comm: Any, what: str, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)``, a collective on ``comm`` (a :class:`~fundl.distributed.Comm`), under
    the watchdog: it knows that this rank waits in ``what`` until ``fn`` returns."""
    w = _watchdog
    if w is None:
        return fn(*args)
    return w.run(comm.world, what, fn, args)


class Watchdog:
    """The state the main thread shares with the watchdog thread, and the watchdog thread.

    The main thread only sets ``current`` (a tuple: position, label, start time) around
    each collective, counts the collectives it completed on ``COMM_WORLD`` (``done``)
    and the steps of :func:`fundl.distributed.make_step` on it (``steps``, ``step``).
    """

    def __init__(self, timeout: float) -> None:
        world = MPI.COMM_WORLD
        self.rank, self.size = world.Get_rank(), world.Get_size()
        self.timeout = timeout
        self.ctl = world.Dup()            # the watchdog's own messages, apart from the user's
        self.current: Optional[Tuple[Optional[int], str, float]] = None
        self.done = 0                     # fundl collectives completed on COMM_WORLD
        self.steps = 0                    # data-parallel steps started on COMM_WORLD
        self.step: Optional[int] = None   # the train state's step of the last one
        self.exited: Dict[int, Tuple[int, int, float]] = {}   # rank -> (steps, done, when)
        self.waits: Dict[int, Tuple[int, str, Optional[int]]] = {}  # rank -> (pos, what, step)
        self.answers: Dict[int, str] = {}
        self.acks: set = set()
        self.announced: Optional[Tuple[Optional[int], str, float]] = None
        self.lock = threading.Lock()
        self.send_lock = threading.Lock()   # both threads send; pending sends must stay alive
        self.failing = False
        self.stopped = False
        self.sends: List[Any] = []
        self.thread = threading.Thread(target=self._watch, name="fundl-mpi-watchdog",
                                       daemon=True)
        self.thread.start()

    # --- the main thread -----------------------------------------------------------------

    def run(self, world: bool, what: str, fn: Callable[..., Any], args: Tuple[Any, ...]) -> Any:
        self.current = (self.done if world else None, what, time.monotonic())
        try:
            result = fn(*args)
        finally:
            self.current = None
        if world:
            self.done += 1
        return result

    def started_step(self, step: int) -> None:
        """Called by the data-parallel step on ``COMM_WORLD`` as each step starts."""
        self.steps += 1
        self.step = step

    def at_exit(self) -> None:
        """The end of this rank's script: tell the others, wait for theirs (as
        ``MPI_Finalize`` would), and fail if the ranks took different numbers of steps."""
        if self.failing or MPI.Is_finalized():
            return
        self.current = (None, "the end of its script", time.monotonic())
        self._send_all(_EXIT, (self.rank, self.steps, self.done))
        while not self.failing and len(self.exited) < self.size - 1:
            time.sleep(POLL / 2)
        if self.failing:       # another rank is ending the job; it aborts us
            time.sleep(10 * GRACE)
            MPI.COMM_WORLD.Abort(1)
        steps = {r: s for r, (s, _, _) in self.exited.items()}
        steps[self.rank] = self.steps
        if len(set(steps.values())) > 1:
            counts = ", ".join(f"rank {r}: {steps[r]}" for r in sorted(steps))
            self.fail(f"the ranks finished their scripts after different numbers of "
                      f"training steps ({counts}); every rank must take the same steps",
                      statuses=False)
        # MPI_Finalize comes next: the watchdog stops touching MPI first
        self.stopped = True
        self.thread.join()
        if self.failing:       # the watchdog began ending the job before it stopped
            time.sleep(10 * GRACE)
            MPI.COMM_WORLD.Abort(1)
        with self.send_lock:
            deadline = time.monotonic() + GRACE
            while self.sends and time.monotonic() < deadline:
                self.sends = [s for s in self.sends if not s.Test()]
                time.sleep(0.001)

    # --- failing -------------------------------------------------------------------------

    def fail(self, reason: str, statuses: bool = True, already_printed: bool = False) -> None:
        """End the job: print ``reason`` (and where every rank is), tell the other ranks,
        wait for them to print it, abort.  Never returns."""
        with self.lock:
            first = not self.failing
            self.failing = True
        if not first:          # another thread of this rank is already ending the job
            time.sleep(10 * GRACE)
            MPI.COMM_WORLD.Abort(1)
        text = reason
        if statuses:
            text += "\n" + self._where_everyone_is()
        try:
            if not already_printed:
                self._print(f"{text}\n(aborting all ranks)")
            self._send_all(_FAIL, (self.rank, text))
            deadline = time.monotonic() + GRACE
            while len(self.acks) < self.size - 1 and time.monotonic() < deadline:
                if threading.current_thread() is self.thread:
                    self._pump()
                time.sleep(POLL / 4)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            MPI.COMM_WORLD.Abort(1)

    def _print(self, text: str) -> None:
        sys.stderr.write(f"fundl.distributed: rank {self.rank} of {self.size}: {text}\n")
        sys.stderr.flush()

    def _where_everyone_is(self) -> str:
        """One line per rank: where it is (asking the others, ``ASK`` seconds at most)."""
        self.answers = {}
        self._send_all(_ASK, self.rank)
        deadline = time.monotonic() + ASK
        while time.monotonic() < deadline:
            missing = [r for r in range(self.size)
                       if r != self.rank and r not in self.answers and r not in self.exited]
            if not missing:
                break
            if threading.current_thread() is self.thread:
                self._pump()
            time.sleep(POLL / 4)
        lines = []
        for r in range(self.size):
            if r == self.rank:
                lines.append(f"  rank {r}: {self.status()}")
            elif r in self.answers:
                lines.append(f"  rank {r}: {self.answers[r]}")
            elif r in self.exited:
                lines.append(f"  rank {r}: finished its script after {self.exited[r][0]} "
                             f"training steps")
            else:
                lines.append(f"  rank {r}: no answer (busy outside fundl, e.g. computing or "
                             f"in an MPI call of its own)")
        return "where each rank is:\n" + "\n".join(lines)

    def status(self) -> str:
        """Where this rank is, in words."""
        steps = ""
        if self.steps:
            steps = (f"started {self.steps} training step{'s' if self.steps != 1 else ''}, "
                     f"the last at train step {self.step}")
        cur = self.current
        if cur is None:
            return "running outside fundl's collectives" + (f" ({steps})" if steps else "")
        pos, what, since = cur
        if what == "the end of its script":
            done = f"after {self.steps} training step{'s' if self.steps != 1 else ''}"
            return f"finished its script {done}; waiting for the others"
        where = f"its collective #{pos + 1}" if pos is not None else "a collective"
        return (f"waiting {time.monotonic() - since:.1f} s in {what} ({where}"
                + (f"; {steps})" if steps else ")"))

    # --- the watchdog thread -------------------------------------------------------------

    def _send_all(self, tag: int, payload: Any) -> None:
        for r in range(self.size):
            if r != self.rank:
                self._send(r, tag, payload)

    def _send(self, rank: int, tag: int, payload: Any) -> None:
        with self.send_lock:
            self.sends = [s for s in self.sends if not s.Test()]
            self.sends.append(self.ctl.isend(payload, dest=rank, tag=tag))

    def _pump(self) -> None:
        """Receive and handle the other ranks' messages."""
        status = MPI.Status()
        while self.ctl.iprobe(source=MPI.ANY_SOURCE, tag=MPI.ANY_TAG, status=status):
            source, tag = status.Get_source(), status.Get_tag()
            msg = self.ctl.recv(source=source, tag=tag)
            if tag == _EXIT:
                rank, steps, done = msg
                self.exited[rank] = (steps, done, time.monotonic())
            elif tag == _WAIT:
                rank, pos, what, step = msg
                self.waits[rank] = (pos, what, step)
            elif tag == _ASK:
                self._send(msg, _STATUS, (self.rank, self.status()))
            elif tag == _STATUS:
                self.answers[msg[0]] = msg[1]
            elif tag == _ACK:
                self.acks.add(msg)
            elif tag == _FAIL:
                rank, text = msg
                with self.lock:
                    first = not self.failing
                    self.failing = True
                if first:   # printed (and flushed) before the failing rank may abort us
                    self._print(f"ending the job because of rank {rank}: {text}")
                    threading.Thread(target=self._abort_later, daemon=True).start()
                self._send(rank, _ACK, self.rank)

    def _abort_later(self) -> None:
        """A rank told to end waits for the failing rank's abort, then aborts itself."""
        time.sleep(3 * GRACE)
        MPI.COMM_WORLD.Abort(1)

    def _watch(self) -> None:
        while not self.stopped:
            time.sleep(POLL)
            if MPI.Is_finalized():   # the script called MPI.Finalize() itself
                return
            try:
                self._pump()
                if not self.failing:
                    self._check()
            except Exception as err:  # noqa: BLE001 - the watchdog must keep watching
                self._print(f"watchdog error {type(err).__name__}: {err}")

    def _check(self) -> None:
        cur = self.current
        if cur is None or cur[1] == "the end of its script":
            return
        pos, what, since = cur
        now = time.monotonic()
        me = f"rank {self.rank}"
        where = f"{what}{self._in_step()}"
        for rank, (steps, done, when) in sorted(self.exited.items()):
            if (pos is not None and done <= pos) or (pos is None and now - when > PROBE):
                joined = (f" (it is {me}'s collective #{pos + 1}; rank {rank} completed {done})"
                          if pos is not None else "")
                self.fail(f"rank {rank} finished its script after {steps} training "
                          f"step{'s' if steps != 1 else ''}, but {me} waits in {where}, which "
                          f"rank {rank} never joined{joined}. Every rank must run the same "
                          f"steps: give each rank the same number of batches "
                          f"(fl.data.batches(..., shard=(rank, size)) does), or use "
                          f"fit(comm=)")
        if pos is not None:
            for rank, (other_pos, other_what, other_step) in sorted(self.waits.items()):
                if other_pos == pos and other_what != what:
                    at = (f" (the last step it started: train step {other_step})"
                          if other_step is not None else "")
                    why = ("one's tree (gradients, state) changed structure while the "
                           "others' did not" if "structure check" in what + other_what else
                           "one ran fewer steps than the others")
                    self.fail(f"{me} waits in {where} while rank {rank} waits in "
                              f"{other_what}{at}, at the same point of their sequences of "
                              f"collectives (#{pos + 1}): the ranks run different code, e.g. "
                              f"{why}")
        if now - since > PROBE and self.announced is not cur:
            self.announced = cur
            self._send_all(_WAIT, (self.rank, pos, what, self.step))
        if now - since > self.timeout:
            self.fail(f"{me} waited {self.timeout:g} s in {where} for a rank that never "
                      f"joined it; raise the limit with dist.world(timeout=...) or "
                      f"FUNDL_MPI_TIMEOUT if a rank may legitimately take longer")

    def _in_step(self) -> str:
        """`` (after starting 3 training steps, the last at train step 2)``, or nothing."""
        if not self.steps:
            return ""
        return (f" (after starting {self.steps} training step{'s' if self.steps != 1 else ''}, "
                f"the last at train step {self.step})")


def timeout_from(timeout: Optional[float]) -> float:
    """``timeout`` or, when ``None``, ``$FUNDL_MPI_TIMEOUT`` or :data:`DEFAULT_TIMEOUT`."""
    if timeout is None:
        env = os.environ.get("FUNDL_MPI_TIMEOUT")
        if env is None:
            return DEFAULT_TIMEOUT
        try:
            timeout = float(env)
        except ValueError:
            raise ValueError(f"FUNDL_MPI_TIMEOUT must be a number of seconds, got {env!r}") \
                from None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"dist.world: timeout must be a number of seconds > 0 (float('inf') "
                         f"for none), got {timeout!r}")
    return float(timeout)


def install(timeout: Optional[float]) -> Optional[Watchdog]:
    """Start the watchdog once per process (on more than one rank); later calls may change
    its ``timeout``.  Every rank must call it (it duplicates ``COMM_WORLD``)."""
    global _watchdog
    seconds = timeout_from(timeout)
    if _watchdog is not None:
        if timeout is not None:
            _watchdog.timeout = seconds
        return _watchdog
    if MPI.COMM_WORLD.Get_size() == 1:
        return None
    _watchdog = Watchdog(seconds)
    atexit.register(_watchdog.at_exit)
    return _watchdog
