"""``celeriac demo``: a real worker and a realistic workload on a throwaway SQLite file.

``tasks`` holds the demo's App and tasks (the worker imports it with
``-A celeriac.demo.tasks``), ``workload`` plans the mix of calls, ``tracker`` counts
what happened from the result backend and the broker, ``display`` draws it, and
``runner`` ties them together with a supervised worker process.
"""
