"""Events: what workers and producers report, on the broker's bus (``celeriac.bus``).

``event`` the types, fields and wire format; ``emitter`` a process's buffer and its
publisher; ``tasks`` the task events of a worker process; ``node`` the worker-online,
heartbeat and offline events of a node; ``sent`` a producer's task-sent; ``receiver``
``app.events.iter()`` / ``aiter()``.
"""
