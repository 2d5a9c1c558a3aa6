"""The web dashboard: a live view of a celeriac cluster and the operator's actions on it.

`celeriac -A proj dashboard` serves server-rendered pages and a JSON API (with an OpenAPI
document) from one Starlette app under uvicorn. A history store (SQLite file or the
broker's Redis) keeps every task's state across restarts and between several dashboard
processes; an ingest thread follows the events bus into it. The service layer reads the
store, the control plane (inspect, pool, consumers) and the broker (queue depths, dead
letters, scheduled messages) and performs actions; the API and the pages render its
dicts. Security by default: loopback bind, auth required elsewhere, CSRF on every POST.
"""
