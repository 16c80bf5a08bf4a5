"""Bounds on rendering templates: a time limit per action, a size limit per rendered value.

Templates are written by rule authors but render event data, and neither may stall the process
or exhaust its memory. Every render runs inside a Budget:

- Time: the templates of one action share RenderLimits.timeout seconds of the rendering
  thread's CPU time. CPU time, not the clock: on a busy machine a render waits for the CPU or
  for the GIL (the event loop and the store's thread share it), and a one-line template must
  not die because the process was kept waiting. The clock is what is read on every check (it
  is cheap); only once it passes the deadline is the thread's CPU time read, and if the render
  has not spent its budget the deadline moves to where the rest of the budget would end.
  Python cannot stop a thread, so the limit is cooperative: the sandbox calls Budget.tick in
  every loop iteration, attribute and item lookup, call, intercepted operator, filter, buffer
  join and output chunk. Each of those steps is itself bounded (below), so a render ends within
  about the limit.
- Size: no text or list a template builds may exceed RenderLimits.max_bytes characters, and
  where the size of a result can be known in advance (repetition, padding and format widths,
  joins, replacements) it is refused before it is allocated. A rendered value may not exceed
  max_bytes bytes of UTF-8, and all the text and lists the templates of one action build (kept
  or not) may not exceed BUILT_FACTOR times that, which bounds what they can hold at once.
  Integers are limited to MAX_INTEGER_DIGITS digits.

Error messages name the limit and the setting, never a value from the template or the event.
A Budget is found through a context variable, so each thread renders under its own limits.
"""

from __future__ import annotations

import re
import time
from collections.abc import ItemsView, Iterable, Iterator, KeysView, Mapping, Sized, ValuesView
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from router.exceptions import TemplateLimitExceeded

if TYPE_CHECKING:
    from router.settings import Settings

DEFAULT_TIMEOUT = 1.0  # seconds for all templates of one action
DEFAULT_MAX_BYTES = 1024 * 1024  # bytes (UTF-8) of one rendered value
# Python itself refuses to print an integer longer than this (sys.int_info), so a longer one
# is of no use in a template; the cap keeps ** and * from computing one at all.
MAX_INTEGER_DIGITS = 4300
# The templates of one action may build this many times max_bytes of text and lists in all
# (32 MiB by default), kept or not: a value counts once built and again written, and real
# templates build far less. It bounds what they hold at once, however many statements they have.
BUILT_FACTOR = 32
SCALAR_SIZE = 32  # characters counted for a float, None or any object that is not a container
TICK_EVERY = 1024  # container items visited between two deadline checks when measuring a value
_LOG10_2 = 0.30103

_CONTAINERS = (list, tuple, set, frozenset, KeysView, ValuesView, ItemsView, Mapping)


@dataclass(frozen=True, slots=True)
class RenderLimits:
    """What rendering one action may spend: `timeout` seconds for all its templates, and
    `max_bytes` bytes (UTF-8) for each rendered value."""

    timeout: float = DEFAULT_TIMEOUT
    max_bytes: int = DEFAULT_MAX_BYTES

    @classmethod
    def from_settings(cls, settings: Settings) -> RenderLimits:
        return cls(timeout=settings.template_timeout, max_bytes=settings.template_max_bytes)

    @contextmanager
    def applied(self) -> Iterator[None]:
        """Render one action inside this block: its templates share one deadline, counted from
        entering the block. Outside such a block each template gets the default limits."""
        token = _CURRENT.set(Budget(self, _Spent(self.timeout)))
        try:
            yield
        finally:
            _CURRENT.reset(token)


class _Spent:
    """What the templates of one action share: their deadline (on the clock; see the module's
    docstring), the thread CPU time they started at, and what they built so far."""

    __slots__ = ("built", "cpu_start", "deadline")

    def __init__(self, timeout: float) -> None:
        self.deadline = time.monotonic() + timeout
        self.cpu_start = time.thread_time()
        self.built = 0


class Budget:
    """The limits of one render and what it has spent. Only the rendering thread uses it."""

    __slots__ = ("_sizes", "_spent", "deadline", "limits")

    def __init__(self, limits: RenderLimits, spent: _Spent) -> None:
        self.limits = limits
        self.deadline = spent.deadline
        self._spent = spent
        # Sizes of the containers this render built, by id (the object is kept so the id
        # cannot be reused): nesting a list in another costs one lookup, not a walk.
        self._sizes: dict[int, tuple[object, int]] = {}

    def tick(self) -> None:
        now = time.monotonic()
        if now <= self.deadline:
            return
        spent = self._spent
        left = self.limits.timeout - (time.thread_time() - spent.cpu_start)
        if left <= 0:
            raise TemplateLimitExceeded(
                f"rendering took longer than {self.limits.timeout:g} s "
                "(ROUTER_TEMPLATE_TIMEOUT); simplify the template or raise the limit"
            )
        # The clock ran while the thread waited: the budget is what the render has not spent.
        spent.deadline = max(spent.deadline, now + left)
        self.deadline = spent.deadline

    def refuse_over(self, size: int, what: str) -> None:
        """Refuse a value of `size` characters that `what` is about to build."""
        limit = self.limits.max_bytes
        if size > limit:
            raise TemplateLimitExceeded(
                f"{what} would exceed the limit of {limit} characters "
                "(ROUTER_TEMPLATE_MAX_BYTES); make it smaller or raise the limit"
            )

    def refuse_input(self, size: int, what: str) -> None:
        """Refuse `size` characters or items to `what`, whose work on them no check can stop."""
        limit = self.limits.max_bytes
        if size > limit:
            raise TemplateLimitExceeded(
                f"{what} takes at most {limit} characters (ROUTER_TEMPLATE_MAX_BYTES); give it "
                "less or raise the limit"
            )

    def refuse_digits(self, bits: int, what: str) -> None:
        if bits * _LOG10_2 > MAX_INTEGER_DIGITS:
            raise TemplateLimitExceeded(
                f"{what} would build a number of more than {MAX_INTEGER_DIGITS} digits; "
                "use smaller numbers"
            )

    def size_of(self, value: Any) -> int:
        """About len(str(value)), counting each shared item as often as it would be written;
        stops counting once over the limit. Text inside containers is counted without the
        escapes repr() may add (at most a constant factor more)."""
        if isinstance(value, str):
            return len(value)
        if isinstance(value, int):
            return _digits(value)
        if not isinstance(value, _CONTAINERS):
            return SCALAR_SIZE
        limit = self.limits.max_bytes
        total = 0
        stack: list[Any] = [value]
        visited = 0
        while stack:
            item = stack.pop()
            if isinstance(item, str):
                total += len(item) + 4  # quotes and a separator
            elif isinstance(item, int):
                total += _digits(item) + 2
            elif isinstance(item, _CONTAINERS):
                known = self._sizes.get(id(item))
                if known is not None and known[0] is item:
                    total += known[1]
                else:
                    total += 2
                    if isinstance(item, Mapping):
                        stack.extend(item.keys())
                        stack.extend(item.values())
                    else:
                        stack.extend(item)
            else:
                total += SCALAR_SIZE
            if total > limit:
                return total
            visited += 1
            if visited % TICK_EVERY == 0:
                self.tick()
        return total

    def made(self, size: int) -> None:
        """Count `size` characters the templates of this action just built or wrote."""
        spent = self._spent
        spent.built += size
        allowed = BUILT_FACTOR * self.limits.max_bytes
        if spent.built > allowed:
            raise TemplateLimitExceeded(
                f"the templates of this action build more than {allowed} characters in all "
                f"({BUILT_FACTOR} times ROUTER_TEMPLATE_MAX_BYTES); make them build less or raise "
                "the limit"
            )

    def built(self, value: Any, what: str) -> Any:
        """A container the template just built: refused if over the limit, else remembered."""
        size = self.size_of(value)
        self.refuse_over(size, what)
        self.made(size)
        self._sizes[id(value)] = (value, size)
        return value

    def text(self, value: Any, what: str) -> str:
        """str(value), refused before conversion when it would be over the limit."""
        if isinstance(value, str):
            self.refuse_over(len(value), what)
            return value
        self.refuse_over(self.size_of(value), what)
        text = str(value)
        self.refuse_over(len(text), what)
        self.made(len(text))
        return text

    def new_text(self, text: str, what: str) -> str:
        """Text an operation just built: refused over the limit, and counted."""
        self.refuse_over(len(text), what)
        self.made(len(text))
        return text

    def iterate(self, iterable: Iterable[Any]) -> Iterator[Any]:
        """A loop's iterable, checking the deadline before every iteration."""
        deadline = self.deadline
        for item in iterable:
            if time.monotonic() > deadline:
                self.tick()
                deadline = self.deadline
            yield item

    def collect(self, iterable: Iterable[Any], what: str) -> list[Any]:
        """list(iterable), refused as soon as its items are over the limit."""
        items: list[Any] = []
        size = 2
        for item in self.iterate(iterable):
            size += self.size_of(item) + 2
            self.refuse_over(size, what)
            items.append(item)
        self.made(size)
        self._sizes[id(items)] = (items, size)
        return items

    def counted(self, iterator: Iterable[Any], what: str) -> Iterator[Any]:
        """Items of a lazy filter result, refused once the text they hold is over the limit."""
        total = 0
        for item in iterator:
            if isinstance(item, str):
                total += len(item)
                self.refuse_over(total, what)
                self.made(len(item))
            yield item


_CURRENT: ContextVar[Budget | None] = ContextVar("router_template_budget", default=None)


def current() -> Budget:
    """The budget of the render in progress on this thread, its deadline just checked."""
    budget = _CURRENT.get()
    if budget is None:
        raise RuntimeError("templates render only through Template.render")
    if time.monotonic() > budget.deadline:
        budget.tick()
    return budget


@contextmanager
def rendering() -> Iterator[Budget]:
    """A fresh budget for one template: it shares the deadline of the enclosing
    RenderLimits.applied() block, or has the default limits of its own."""
    outer = _CURRENT.get()
    if outer is None:
        limits = RenderLimits()
        budget = Budget(limits, _Spent(limits.timeout))
    else:
        budget = Budget(outer.limits, outer._spent)
    token = _CURRENT.set(budget)
    try:
        yield budget
    finally:
        _CURRENT.reset(token)


def _digits(number: int) -> int:
    return int(number.bit_length() * _LOG10_2) + 2


# ---------------------------------------------------------------- sizes known in advance

# printf-style conversion: %[(key)][flags][width][.precision][length]type
_PERCENT = re.compile(
    r"%(?:\((?P<key>[^)]*)\))?[-#0 +]*(?P<width>\*|\d+)?(?:\.(?P<precision>\*|\d+))?[hlL]?"
    r"(?P<type>.)",
    re.DOTALL,
)


def percent_size(budget: Budget, fmt: str, args: Any) -> int:
    """About len(fmt % args): the format's text plus, for each conversion, its width, its
    precision and the size of its value. Malformed formats are left to `%` to refuse."""
    positional = list(args) if isinstance(args, tuple) else [args]
    mapping = args if isinstance(args, Mapping) else None
    size = len(fmt)
    index = 0

    def take() -> Any:
        nonlocal index
        value = positional[index] if index < len(positional) else None
        index += 1
        return value

    for match in _PERCENT.finditer(fmt):
        if match["type"] == "%":
            continue
        for part in (match["width"], match["precision"]):
            if part == "*":
                star = take()
                size += abs(star) if isinstance(star, int) else 0
            elif part is not None:
                size += int(part)
        if match["key"] is not None:
            value = mapping.get(match["key"]) if mapping is not None else None
        else:
            value = take()
        size += budget.size_of(value)
        if size > budget.limits.max_bytes:
            break
    return size


def spec_size(spec: str) -> int:
    """An upper bound on what a str.format spec adds to a value: every number in it (a width,
    a precision, a digit used as fill) counted in full."""
    return sum(int(number) for number in re.findall(r"\d+", spec))


def replaced_size(text: str, old: str, new: str, count: int) -> int:
    """len(text.replace(old, new, count)), computed without replacing."""
    found = text.count(old) if old else len(text) + 1
    if count >= 0:
        found = min(found, count)
    return len(text) + found * (len(new) - len(old))


def wrapped_size(text: str, width: int, wrapstring: str) -> int:
    """An upper bound on the length of Jinja's wordwrap(text, width, wrapstring): each line
    ends at whitespace, a hyphen, a line break or after `width` characters."""
    breaks = sum(text.count(c) for c in " \t\n\r\v\f-") + len(text) // max(width, 1) + 1
    return len(text) + breaks * len(wrapstring)


# ---------------------------------------------------------------- checked operations

# Filters whose work on a text runs in Python (about a microsecond a character for wordwrap at
# width 1, a list of every word for title) where no deadline check reaches: beyond this much
# text one call could take a good part of the time limit and tens of megabytes. E-mails, URLs and
# messages are far shorter.
MAX_SLOW_TEXT = 100_000
SLOW_TEXT_FILTERS = frozenset(
    {"indent", "striptags", "title", "urlencode", "wordcount", "wordwrap"}
)
# Sorting runs a Python key function per item that no deadline check reaches: about 1.5 µs an
# item here, so this many take a small part of the time limit.
MAX_SORTED_ITEMS = 100_000
SORTING_FILTERS = frozenset({"dictsort", "groupby", "max", "min", "sort"})
# Python's round(x, n) computes 10 ** n: no float has more digits than this, anyway.
MAX_ROUND_DIGITS = 100
# The filters check_filter has something to check for.
CHECKED_FILTERS = SORTING_FILTERS | SLOW_TEXT_FILTERS | {
    "center", "format", "replace", "round", "tojson",
}  # fmt: skip


def check_binop(budget: Budget, operator: str, left: Any, right: Any) -> None:
    """Refuse `left <operator> right` (an intercepted operator) when its result would be over
    a limit, before computing it."""
    if operator == "**":
        if isinstance(left, int) and isinstance(right, int) and right > 1 and abs(left) > 1:
            budget.refuse_digits(left.bit_length() * right, "**")
    elif operator == "*":
        if isinstance(left, int) and isinstance(right, int):
            budget.refuse_digits(left.bit_length() + right.bit_length(), "*")
            return
        for seq, count in ((left, right), (right, left)):
            if isinstance(seq, str | list | tuple) and isinstance(count, int) and count > 1:
                kind = "a text" if isinstance(seq, str) else "a list"
                budget.refuse_over(budget.size_of(seq) * count, f"repeating {kind}")
    elif operator == "+":
        if isinstance(left, str) and isinstance(right, str):
            budget.refuse_over(len(left) + len(right), "+")
        elif isinstance(left, list | tuple) and isinstance(right, list | tuple):
            budget.refuse_over(budget.size_of(left) + budget.size_of(right), "+")
    elif operator == "%" and isinstance(left, str):
        budget.refuse_over(percent_size(budget, left, right), "% formatting")


def checked_result(budget: Budget, value: Any, what: str) -> Any:
    """A value an operation just built: text is refused over the limit, a list is measured
    and remembered (so nesting it costs nothing to check)."""
    if isinstance(value, str):
        budget.new_text(value, what)
    elif isinstance(value, list | tuple):
        budget.built(value, what)
    return value


def str_call_args(
    budget: Budget, name: str, text: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]
) -> tuple[Any, ...]:
    """Check a call of the str method `name` on `text` before it is made; returns the
    positional arguments to call it with (a joined iterable is read once, here)."""
    what = f"{name}()"
    if name in ("center", "ljust", "rjust", "zfill"):
        width = _arg(args, kwargs, 0, "width", 0)
        if isinstance(width, int):
            budget.refuse_over(max(len(text), width), what)
    elif name == "expandtabs":
        tabsize = _arg(args, kwargs, 0, "tabsize", 8)
        if isinstance(tabsize, int):
            budget.refuse_over(len(text) + text.count("\t") * max(tabsize, 0), what)
    elif name == "replace":
        old, new = _arg(args, kwargs, 0, "old", None), _arg(args, kwargs, 1, "new", None)
        count = _arg(args, kwargs, 2, "count", -1)
        if isinstance(old, str) and isinstance(new, str) and isinstance(count, int):
            budget.refuse_over(replaced_size(text, old, new, count), what)
    elif name in ("split", "rsplit", "splitlines"):
        budget.refuse_input(len(text), what)  # a list of parts, made at once
    elif name == "join" and len(args) == 1:
        items = list(budget.iterate(args[0]))
        size = sum(len(item) for item in items if isinstance(item, str))
        budget.refuse_over(size + len(text) * max(len(items) - 1, 0), what)
        return (items,)
    return args


def check_filter(
    budget: Budget, name: str, value: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]
) -> Any:
    """Refuse a call of the filter `name` whose result would be over a limit, before it is
    made. `value` is what the filter is applied to (already text for text filters); returns
    the value to apply it to (a lazy one read here, under the deadline, if it must be counted)."""
    what = f"the {name} filter"
    if name in SLOW_TEXT_FILTERS and isinstance(value, str) and len(value) > MAX_SLOW_TEXT:
        raise TemplateLimitExceeded(
            f"{what} takes at most {MAX_SLOW_TEXT} characters; give it a shorter text"
        )
    if name in SORTING_FILTERS:
        if not isinstance(value, Sized):
            value = list(budget.iterate(value))
        if len(value) > MAX_SORTED_ITEMS:
            raise TemplateLimitExceeded(
                f"{what} takes at most {MAX_SORTED_ITEMS} items; give it fewer"
            )
    elif name == "center":
        width = _arg(args, kwargs, 0, "width", 80)
        if isinstance(value, str) and isinstance(width, int):
            budget.refuse_over(max(len(value), width), what)
    elif name == "indent":
        width = _arg(args, kwargs, 0, "width", 4)
        step = len(width) if isinstance(width, str) else width if isinstance(width, int) else 0
        if isinstance(value, str):
            budget.refuse_over(len(value) + (value.count("\n") + 1) * max(step, 0), what)
    elif name == "wordwrap" and isinstance(value, str):
        width = _arg(args, kwargs, 0, "width", 79)
        wrapstring = _arg(args, kwargs, 2, "wrapstring", None)
        if isinstance(width, int):
            joint = wrapstring if isinstance(wrapstring, str) else "\n"
            budget.refuse_over(wrapped_size(value, width, joint), what)
    elif name == "replace" and isinstance(value, str):
        old, new = _arg(args, kwargs, 0, "old", None), _arg(args, kwargs, 1, "new", None)
        count = _arg(args, kwargs, 2, "count", None)
        if isinstance(old, str | int | float) and isinstance(new, str | int | float):
            limit = count if isinstance(count, int) else -1
            budget.refuse_over(replaced_size(value, str(old), str(new), limit), what)
    elif name == "format" and isinstance(value, str):
        budget.refuse_over(percent_size(budget, value, dict(kwargs) or tuple(args)), what)
    elif name == "tojson":
        budget.refuse_over(budget.size_of(value), what)
    elif name == "round":
        precision = _arg(args, kwargs, 0, "precision", 0)
        if isinstance(precision, int) and abs(precision) > MAX_ROUND_DIGITS:
            raise TemplateLimitExceeded(
                f"{what} rounds to at most {MAX_ROUND_DIGITS} digits; use a smaller precision"
            )
    return value


def _arg(
    args: tuple[Any, ...], kwargs: Mapping[str, Any], index: int, name: str, default: Any
) -> Any:
    return args[index] if len(args) > index else kwargs.get(name, default)
