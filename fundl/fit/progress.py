"""fit's progress display: steps, epoch, the running loss and metrics; tqdm when installed
(``tqdm.auto``, a widget in Jupyter), else one ``\\r`` line."""

from __future__ import annotations

import sys
import time
from typing import Any, Callable, Mapping, Optional, Union

__all__ = ["Progress", "in_notebook"]


def _load_tqdm() -> Any:
    """``tqdm.auto.tqdm`` if tqdm is installed (the notebook widget under Jupyter, the text bar
    elsewhere), else ``None`` (a function so tests can replace it)."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm


def in_notebook() -> bool:
    """Whether this process is a Jupyter (IPython kernel) session: IPython is imported and its
    shell is a kernel's (``ZMQInteractiveShell``, or one with a ``kernel``)."""
    ipython = sys.modules.get("IPython")
    get = getattr(ipython, "get_ipython", None)
    if get is None:
        return False
    try:
        shell = get()
    except Exception:  # noqa: BLE001 - a half-imported IPython
        return False
    return shell is not None and (type(shell).__name__ == "ZMQInteractiveShell"
                                  or getattr(shell, "kernel", None) is not None)


def _fmt(logs: Mapping[str, float]) -> str:
    return "  ".join(f"{k} {v:.4g}" for k, v in logs.items())


class Progress:
    """A progress display on stderr.

    ``mode``: ``"auto"`` shows it when stderr is a terminal or in a Jupyter notebook,
    ``True`` always, ``False`` never.
    """

    def __init__(self, mode: Union[bool, str], total: int, initial: int):
        if mode not in (True, False, "auto"):
            raise ValueError(f"progress must be True, False or 'auto', got {mode!r}")
        self.stream = sys.stderr
        isatty = getattr(self.stream, "isatty", lambda: False)
        self.on = mode is True or (mode == "auto" and (bool(isatty()) or in_notebook()))
        self.total, self.bar, self.last = total, None, 0.0
        if self.on:
            tqdm = _load_tqdm()
            if tqdm is not None:
                self.bar = tqdm(total=total, initial=initial, file=self.stream, unit="step",
                                dynamic_ncols=True)

    def update(self, step: int, epoch: int,
               logs: Optional[Callable[[], Mapping[str, float]]] = None) -> None:
        """Step ``step`` done in epoch ``epoch``; ``logs()`` (the running loss and metrics) is
        called and shown at most ten times a second."""
        if not self.on:
            return
        now = time.monotonic()
        due = now - self.last >= 0.1 or step == self.total
        shown = (logs() if logs is not None else {}) if due else {}
        if self.bar is not None:
            self.bar.update(1)
            if due:
                self.bar.set_postfix(epoch=epoch, refresh=False,
                                     **{k: f"{v:.4g}" for k, v in shown.items()})
        elif due:
            self.stream.write(f"\rstep {step}/{self.total}  epoch {epoch}  {_fmt(shown)}   ")
            self.stream.flush()
        if due:
            self.last = now

    def close(self) -> None:
        if not self.on:
            return
        if self.bar is not None:
            self.bar.close()
        else:
            self.stream.write("\n")
            self.stream.flush()
