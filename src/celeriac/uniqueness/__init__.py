"""Unique jobs: ``@app.task(unique_for=60)`` and ``apply_async(unique_key=..., unique_for=...)``.

While a task holding a key is queued, scheduled or running, another send with that key
enqueues nothing and returns the holder's ``AsyncResult``. ``keys`` derives and checks
keys, ``store`` holds them on a server (``sqlite``, ``redis``; memory in ``store``),
``send`` claims them for producers and releases them for workers. See
docs/unique-jobs.md.
"""

from celeriac.uniqueness.keys import check_unique_for, derive_key
from celeriac.uniqueness.store import UniqueKeys, unique_keys

__all__ = ["UniqueKeys", "check_unique_for", "derive_key", "unique_keys"]
