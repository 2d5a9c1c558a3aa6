"""Every endpoint of the dashboard's JSON API, on SQLite, Redis and RabbitMQ.

One worker and one dashboard per broker (``conftest.world``); the tests run in file
order and the last one shuts the worker down from the API.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from dash_harness import World, wait_for

from celeriac.dashboard.api import ENDPOINTS


def test_reads_tasks_workers_queues_and_the_documents(world: World) -> None:
    # Given a success, a failure and a task that hides its arguments
    app = world.app
    added = app.send_task("dash.add", [2, 3])
    failed = app.send_task("dash.fail_once", [f"reads-{world.kind}"])
    hidden = app.send_task("dash.secret", ["tok-s3cr3t"])

    # Then each task's page has what the operator needs
    done = world.task_in(added.id, "SUCCESS")
    assert (done["name"], done["result"], done["worker"], done["hidden"]) == \
        ("dash.add", 5, world.hostname, False)
    assert done["args"] == "(2, 3)"
    assert done["runtime"] is not None
    assert "task-succeeded" in [event[0] for event in done["events"]]
    assert done["family"]["nodes"][0]["id"] == added.id
    broken = world.task_in(failed.id, "FAILURE")
    assert "ValueError" in broken["exception"]
    assert "first run of" in broken["traceback"]
    secret = world.task_in(hidden.id, "SUCCESS")
    assert (secret["args"], secret["kwargs"], secret["result"], secret["hidden"]) == \
        ("(hidden)", "(hidden)", "(hidden)", True)
    assert "tok-s3cr3t" not in world.client.get("/api/tasks", params={
        "name": "dash.secret"}).text
    assert world.get("/api/tasks", text="s3cr3t")["total"] == 0

    # The search filters, pages and refuses bad input naming the field
    found = world.get("/api/tasks", name="dash.add", state="SUCCESS", limit=1)
    assert found["total"] >= 1
    assert len(found["tasks"]) == 1
    assert found["limit"] == 1
    assert world.get("/api/tasks", id=failed.id)["tasks"][0]["state"] == "FAILURE"
    assert world.get("/api/tasks", worker=world.hostname, sort="name",
                     order="asc")["total"] >= 3
    for params, name in (({"sort": "colour"}, "sort"), ({"order": "up"}, "order"),
                         ({"limit": "0"}, "limit"), ({"since": "yesterday"}, "since"),
                         ({"state": "DONE"}, "state"), ({"colour": "red"}, "colour")):
        assert world.get("/api/tasks", 400, **params)["field"] == name
    assert "no task" in world.get("/api/tasks/no-such-task", 404)["error"]

    # Overview, workers, queues
    overview = world.get("/api/overview")
    assert overview["workers"]["online"] >= 1
    assert overview["tasks"]["SUCCESS"] >= 2
    assert overview["tasks"]["FAILURE"] >= 1
    assert len(overview["throughput"]) >= 60
    assert overview["alerts"] == []
    assert sum(b["succeeded"] for b in overview["throughput"]) >= 2
    assert "celeriac" in [queue["name"] for queue in overview["queues"]]
    def worker() -> dict[str, Any]:
        return next(w for w in world.get("/api/workers") if w["hostname"] == world.hostname)

    world.dashboard.service.forget_inspect()  # (answers are reused for two seconds)
    found = wait_for(lambda: (w := worker())["processed"] >= 3 and w, "processed >= 3")
    assert (found["online"], found["pool"], found["concurrency"]) == (True, "threads", 2)
    assert found["queues"] == ["celeriac"]
    assert found["uptime"] > 0
    assert len(found["loadavg"]) == 3  # from its heartbeats
    queue = next(q for q in world.get("/api/queues") if q["name"] == "celeriac")
    assert set(queue) >= {"ready", "scheduled", "in_flight", "dead_letters", "oldest_age",
                          "history"}
    assert queue["history"]
    assert len(queue["history"][-1]) == 2

    # Scheduled: the broker's own list (SQLite, Redis) or the history's (RabbitMQ)
    later = app.send_task("dash.add", [7, 7], countdown=600)
    row = wait_for(lambda: next((s for s in world.get("/api/scheduled")
                                 if s["id"] == later.id), None), "the scheduled task")
    assert row["name"] == "dash.add"
    assert row["eta"] > time.time() + 500
    assert row["source"] == ("history" if world.kind == "amqp" else "broker")
    world.post(f"/api/tasks/{later.id}/revoke")  # (it never runs)

    # Flower's paths
    info = world.get(f"/api/task/info/{added.id}")
    assert (info["uuid"], info["result"], info["state"]) == (added.id, 5, "SUCCESS")
    assert info["succeeded"] == done["finished_at"]
    lengths = world.get("/api/queues/length")["active_queues"]
    assert "celeriac" in [q["name"] for q in lengths]

    # The documents: CSRF token, OpenAPI (every route in it), metrics, health
    assert len(world.get("/api/csrf")["token"]) == 64
    document = world.get("/api/openapi.json")
    assert document["openapi"] == "3.1.0"
    for endpoint in ENDPOINTS:
        assert endpoint.method.lower() in document["paths"][endpoint.path]
    metrics = world.client.get("/metrics").text
    assert 'celeriac_queue_ready{queue="celeriac"}' in metrics
    assert "celeriac_workers_online 1.0" in metrics
    assert "celeriac_broker_up 1.0" in metrics
    assert world.client.get("/healthz").text == "live\n"

    # The live stream says the version at once
    with world.client.stream("GET", "/api/stream") as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        line = next(line for line in stream.iter_lines() if line.startswith("data:"))
    assert json.loads(line.removeprefix("data:"))["version"] >= 1


def test_task_actions_retry_revoke_rate_limit_apply(world: World) -> None:
    app = world.app
    # A failed task is retried under its own id, with its arguments (longer than the
    # events' bounded repr: they come from the stored FAILURE), and succeeds
    failed = app.send_task("dash.fail_once", [f"retry-{world.kind}"], {"padding": "x" * 400})
    world.task_in(failed.id, "FAILURE")
    answer = world.post(f"/api/tasks/{failed.id}/retry")
    assert answer == {"ok": True, "id": failed.id, "name": "dash.fail_once"}
    assert world.task_in(failed.id, "SUCCESS")["result"] == f"retry-{world.kind} ok"
    assert failed.get(timeout=10) == f"retry-{world.kind} ok"
    assert "only a failed task" in world.post(f"/api/tasks/{failed.id}/retry",
                                              status=409)["error"]
    assert world.post("/api/tasks/no-such-task/retry", status=404)["error"]

    # A running task is revoked with terminate and ends REVOKED
    napping = app.send_task("dash.nap", [60])
    world.task_in(napping.id, "STARTED")
    assert world.post(f"/api/tasks/{napping.id}/revoke", {"terminate": True})["terminate"]
    world.task_in(napping.id, "REVOKED")
    assert world.post(f"/api/tasks/{napping.id}/revoke", {"terminate": "yes"},
                      status=400)["field"] == "terminate"
    # Flower's revoke
    later = app.send_task("dash.add", [1, 1], countdown=600)
    assert world.post(f"/api/task/revoke/{later.id}", terminate="false")["message"] == \
        f"Revoked '{later.id}'"

    # Rate limits: set, lifted, refused when malformed
    assert world.post("/api/task-types/dash.add/rate-limit",
                      {"rate": "100/s"})["rate"] == "100/s"
    assert world.post("/api/task-types/dash.add/rate-limit", {"rate": 0})["rate"] == "0"
    assert world.post("/api/task-types/dash.add/rate-limit", {"rate": "fast"},
                      status=400)["field"] == "rate"

    # Sending a task, and Flower's async-apply
    sent = world.post("/api/tasks/apply/dash.add", {"args": [20, 22]})
    assert app.AsyncResult(sent["id"]).get(timeout=10) == 42
    flower = world.post("/api/task/async-apply/dash.add", {"args": [1], "kwargs": {"y": 2}})
    assert app.AsyncResult(flower["task-id"]).get(timeout=10) == 3
    assert world.post("/api/tasks/apply/dash.add", {"args": "1, 2"},
                      status=400)["field"] == "args"
    assert world.post("/api/tasks/apply/dash.add", {"args": [1, 2], "options": {
        "colour": 1}}, status=400)["field"] == "colour"


def test_dead_letters_requeue_delete_and_purge(world: World) -> None:
    app = world.app
    tag = uuid.uuid4().hex[:6]
    first = app.send_task("dash.refuse_once", [f"{tag}-1"])
    second = app.send_task("dash.refuse", [f"{tag}-2"])

    def letters(task: str | None = None) -> list[dict[str, object]]:
        found: list[dict[str, object]] = world.get("/api/dead-letters", **(
            {"task": task} if task else {}))
        return [letter for letter in found if letter["id"] in (first.id, second.id)]

    listed = wait_for(lambda: len(found := letters()) == 2 and found, "two dead letters")
    assert {letter["queue"] for letter in listed} == {"celeriac"}
    assert all("refused" in str(letter["reason"]) for letter in listed)
    # the preview is the call it carries, not the frame's bytes
    assert {letter["preview"] for letter in listed} == {f"('{tag}-1',) {{}}", f"('{tag}-2',) {{}}"}
    assert [letter["id"] for letter in letters("dash.refuse")] == [second.id]
    if world.kind == "sqlite":  # (the one broker that keeps it)
        assert {letter["delivery_count"] for letter in listed} == {1}
    assert world.get("/api/dead-letters", queue="no-such-queue") == []
    world.task_in(first.id, "REJECTED")

    # Requeued: it runs again, and this time succeeds
    assert world.post("/api/dead-letters/requeue", {"ids": [first.id]})["requeued"] == 1
    assert world.task_in(first.id, "SUCCESS")["result"] == f"{tag}-1 ran"
    assert [letter["id"] for letter in letters()] == [second.id]
    # One that fails again is dead-lettered again, and that new letter stays
    dead_at = letters()[0]["dead_at"]
    assert world.post("/api/dead-letters/requeue", {"task": "dash.refuse"})["requeued"] == 1
    wait_for(lambda: [letter["dead_at"] != dead_at for letter in letters()] == [True],
             "the requeued letter dead again")

    # Deleted by task name; then nothing matches
    assert world.post("/api/dead-letters/delete", {"task": "dash.refuse"})["deleted"] == 1
    assert letters() == []
    assert world.post("/api/dead-letters/requeue", {"ids": ["nope"]}, status=404)
    assert world.post("/api/dead-letters/requeue", {}, status=400)["field"] == "ids"
    assert world.post("/api/dead-letters/delete", {"ids": "x"}, status=400)["field"] == "ids"

    # Purge: confirmed with the queue's name; an unknown queue is 404
    app.send_task("dash.add", [3, 3], countdown=600)
    assert world.post("/api/queues/celeriac/purge", {}, status=400)["field"] == "confirm"
    assert world.post("/api/queues/celeriac/purge", {"confirm": "celeriac"})["purged"] >= 1
    assert world.post("/api/queues/no-such-queue/purge", {"confirm": "no-such-queue"},
                      status=404)


def test_worker_actions_pool_consumers_and_shutdown(world: World) -> None:
    host = world.hostname

    def worker() -> dict[str, object]:
        return next(w for w in world.get("/api/workers") if w["hostname"] == host)

    assert world.post(f"/api/workers/{host}/pool/grow", {"n": 2})["ok"]
    wait_for(lambda: worker()["concurrency"] == 4, "the pool grown to 4")
    assert world.post(f"/api/workers/{host}/pool/shrink", {})["ok"]
    wait_for(lambda: worker()["concurrency"] == 3, "the pool shrunk to 3")
    assert world.post(f"/api/workers/{host}/pool/grow", {"n": 0},
                      status=400)["field"] == "n"

    assert world.post(f"/api/workers/{host}/consumers/add", {"queue": "extra"})["ok"]
    wait_for(lambda: "extra" in worker()["queues"], "the worker consuming 'extra'")
    assert world.post(f"/api/workers/{host}/consumers/cancel", {"queue": "extra"})["ok"]
    wait_for(lambda: worker()["queues"] == ["celeriac"], "the worker leaving 'extra'")
    assert world.post(f"/api/workers/{host}/consumers/add", {},
                      status=400)["field"] == "queue"
    if world.kind == "sqlite":  # (waits for the answer's timeout: once is enough)
        assert "did not answer" in world.post("/api/workers/nobody@nowhere/shutdown",
                                              status=404)["error"]

    assert world.post(f"/api/workers/{host}/shutdown")["ok"]
    assert world.worker.wait(20) == 0
    wait_for(lambda: not worker()["online"], "the worker shown offline")
