"""How the CLI shows records to people: words for values, aligned fields and tables."""

from collections.abc import Sequence
from typing import Any


def word(value: Any) -> str:
    """A value as a person reads it: yes/no, none, lists joined."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ", ".join(map(word, value)) or "none"
    return str(value)


def fields(view: dict[str, Any]) -> str:
    """One `name  value` line per field, names aligned; a nested object indents its own."""
    width = max((len(name) for name in view), default=0)
    lines = []
    for name, value in view.items():
        if isinstance(value, dict):
            lines.append(name)
            lines += [f"  {line}" for line in fields(value).splitlines()]
        else:
            lines.append(f"{name.ljust(width)}  {word(value)}")
    return "\n".join(lines)


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str], empty: str) -> str:
    """Rows under upper-case headings, columns aligned; `empty` when there are none."""
    if not rows:
        return empty
    cells = [[word(row[column]) for column in columns] for row in rows]
    headings = [column.replace("_", " ").upper() for column in columns]
    widths = [max(len(cell) for cell in column) for column in zip(headings, *cells, strict=True)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in [headings, *cells]
    )
