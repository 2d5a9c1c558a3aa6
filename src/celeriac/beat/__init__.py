"""Periodic tasks (Celery's beat), with any number of beat processes and one leader.

- ``schedules``: ``schedule`` (every N seconds) and ``crontab``, with the DST rule;
- ``entry``: one periodic task, from ``beat_schedule`` or ``app.beat.add``;
- ``store`` (+ ``store_sqlite``, ``store_redis``): the state on the server;
- ``leader``: the lease and its fencing token;
- ``scheduler``: the loop that records, then sends, each due run once;
- ``dynamic``: ``app.beat`` (add, remove, pause, resume, list);
- ``service``: beat inside a worker node (``celeriac worker -B``).

docs/periodic-tasks.md is the user's guide.
"""

from celeriac.beat.schedules import crontab, schedule

__all__ = ["crontab", "schedule"]
