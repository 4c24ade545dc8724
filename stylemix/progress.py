"""The one progress bar every long loop uses: count, rate and ETA, plus optional live fields."""
from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
from rich.text import Text

T = TypeVar("T")


class RateColumn(ProgressColumn):
    def __init__(self, unit: str):
        super().__init__()
        self.unit = unit

    def render(self, task) -> Text:
        return Text(f"{task.speed:.2f} {self.unit}/s" if task.speed else f"-- {self.unit}/s", style="progress.data.speed")


def progress(*extra: str, unit: str = "it", disable: bool = False) -> Progress:
    """A rich Progress with count, rate (in `unit`s a second) and ETA; `extra` names task fields shown after them."""
    fields = [TextColumn(f"{name} {{task.fields[{name}]}}") for name in extra]
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), RateColumn(unit),
                    TimeRemainingColumn(), *fields, disable=disable, refresh_per_second=2)


def track(items: Iterable[T], description: str, total: int | None = None, unit: str = "images") -> Iterator[T]:
    items = list(items) if total is None else items
    with progress(unit=unit) as bar:
        task = bar.add_task(description, total=len(items) if total is None else total)
        for item in items:
            yield item
            bar.advance(task)
