"""The monitor's paging model: which slice of the task list is on screen.

The position is kept as the index of the first row shown, not as a page number, so a resize
that changes the page size lands on the page that still holds the row that was at the top:
the user keeps their place instead of jumping to an unrelated page. Pages stay aligned to
multiples of the page size, so page N/M in the footer always means the same rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = ["Key", "Pager"]


class Key(StrEnum):
    """What the monitor reacts to: a paging key, quitting, or the terminal being resized."""

    NEXT = "next"
    PREV = "prev"
    FIRST = "first"
    LAST = "last"
    QUIT = "quit"
    RESIZE = "resize"


@dataclass(slots=True)
class Pager:
    """Page through `total` rows, `page_size` at a time; every change keeps it in range.

    Attributes:
        page_size: Rows per page, at least 1.
        total: Rows in the list.
        offset: Index of the first row shown; a multiple of `page_size` below `total`
            (0 when the list is empty).
    """

    page_size: int = 1
    total: int = 0
    offset: int = 0

    def __post_init__(self) -> None:
        self.page_size = max(1, self.page_size)
        self.total = max(0, self.total)
        self._clamp(self.offset)

    @property
    def page(self) -> int:
        """The page shown, counted from 1."""
        return self.offset // self.page_size + 1

    @property
    def pages(self) -> int:
        """How many pages there are; an empty list has one (empty) page."""
        return max(1, -(-self.total // self.page_size))

    @property
    def rows(self) -> range:
        """The indexes of the rows on the page shown."""
        return range(self.offset, min(self.offset + self.page_size, self.total))

    def resize(self, page_size: int) -> None:
        """Show `page_size` rows a page, on the page that holds the current top row."""
        self.page_size = max(1, page_size)
        self._clamp(self.offset)

    def set_total(self, total: int) -> None:
        """The list now has `total` rows; past its end, show its last page."""
        self.total = max(0, total)
        self._clamp(self.offset)

    def next(self) -> None:
        """Show the next page; on the last page, stay."""
        self._clamp(self.offset + self.page_size)

    def prev(self) -> None:
        """Show the previous page; on the first page, stay."""
        self._clamp(self.offset - self.page_size)

    def first(self) -> None:
        """Show the first page."""
        self._clamp(0)

    def last(self) -> None:
        """Show the last page."""
        self._clamp(self.total)

    def apply(self, key: Key) -> None:
        """Move as a paging key asks; other keys change nothing."""
        moves = {
            Key.NEXT: self.next,
            Key.PREV: self.prev,
            Key.FIRST: self.first,
            Key.LAST: self.last,
        }
        move = moves.get(key)
        if move is not None:
            move()

    def _clamp(self, offset: int) -> None:
        last_offset = (self.pages - 1) * self.page_size
        aligned = (max(0, offset) // self.page_size) * self.page_size
        self.offset = min(aligned, last_offset)
