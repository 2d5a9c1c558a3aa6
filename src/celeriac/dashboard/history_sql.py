"""What the SQL history stores (SQLite, PostgreSQL) share: a query's filters as a WHERE
clause. The two differ only in the placeholder and the case-insensitive LIKE."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from celeriac.dashboard.history import TaskQuery


def where(query: TaskQuery, mark: str, like: str,
          always: Sequence[str] = ()) -> tuple[str, list[Any]]:
    """The WHERE clause of ``query``'s filters (with a leading space; empty when there
    are none) and its values: ``mark`` is the driver's placeholder (``?``, ``%s``),
    ``like`` its case-insensitive LIKE, ``always`` conditions every row must meet."""
    clauses = list(always)
    params: list[Any] = []
    for column in ("id", "name", "state", "queue", "worker"):
        value = getattr(query, column)
        if value is not None:
            clauses.append(f"{column} = {mark}")
            params.append(value)
    if query.since is not None:
        clauses.append(f"updated_at >= {mark}")
        params.append(query.since)
    if query.until is not None:
        clauses.append(f"updated_at <= {mark}")
        params.append(query.until)
    if query.text:
        # % and _ in the text match themselves (escaped), as the substring search the
        # other stores do.
        pattern = "%" + (query.text.replace("\\", "\\\\").replace("%", "\\%")
                         .replace("_", "\\_")) + "%"
        clauses.append(f"(args {like} {mark} ESCAPE '\\' OR kwargs {like} {mark} "
                       f"ESCAPE '\\')")
        params.extend((pattern, pattern))
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params
