"""Progress for long loops: a tqdm bar in the terminal plus optional listeners.

Stage modules call `track(...)` and never import Prefect; the flow layer adds a listener that
mirrors progress into a Prefect progress artifact (see flows/seva.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")
Listener = Callable[[str, int, int], None]  # (description, done, total)
_listeners: list[Listener] = []


def add_listener(fn: Listener) -> None:
    _listeners.append(fn)


def remove_listener(fn: Listener) -> None:
    if fn in _listeners:
        _listeners.remove(fn)


def report(desc: str, done: int, total: int) -> None:
    """Tell listeners how far a loop got (for code that advances in chunks, not items)."""
    for fn in list(_listeners):
        fn(desc, done, total)


def track(items: Iterable[T], *, total: int | None = None, desc: str = "", every: int = 1) -> Iterator[T]:
    """Iterate with a terminal bar; notify listeners every `every` items and at the end."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    done = 0
    with tqdm(items, total=total, desc=desc, leave=False, dynamic_ncols=True) as bar:
        for item in bar:
            yield item
            done += 1
            if total and (done % every == 0 or done == total):
                report(desc, done, total)


def trainer_callback(desc: str):
    """A transformers `TrainerCallback` that reports the step counter (main process only) as `desc`."""
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                report(desc, state.global_step, state.max_steps)

    return Progress()
