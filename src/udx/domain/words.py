"""Counted nouns in messages: one spelling everywhere ("1 step", "2 steps")."""

from __future__ import annotations

_IRREGULAR = {"entry": "entries", "copy": "copies", "match": "matches"}


def plural(n: int, noun: str) -> str:
    """"1 step", "2 steps", "0 sagas"; "1 usage row", "3 usage rows"."""
    if n == 1:
        return f"{n} {noun}"
    head, _, last = noun.rpartition(" ")
    many = _IRREGULAR.get(last, last + "s")
    return f"{n} {head + ' ' if head else ''}{many}"
