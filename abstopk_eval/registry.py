"""A tiny typed registry (name -> item) with one-line errors for unknown names."""

from __future__ import annotations

from typing import TypeVar

from abstopk_eval.errors import UserError

T = TypeVar("T")


class Registry(dict[str, T]):
    """A dict of named items; `register` refuses duplicates, `lookup` raises a UserError listing known names."""

    def __init__(self, what: str):
        super().__init__()
        self.what = what

    def register(self, name: str, item: T) -> T:
        if name in self:
            raise ValueError(f"{self.what} {name!r} is already registered")
        self[name] = item
        return item

    def lookup(self, name: str) -> T:
        try:
            return self[name]
        except KeyError:
            raise UserError(f"unknown {self.what} {name!r}; known: {', '.join(self)}") from None
