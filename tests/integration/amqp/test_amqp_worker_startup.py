"""A worker whose RabbitMQ refuses it (issue 10, part 5): one line per attempt with the
server's words, no crashed or restarted processes, and it consumes once the user exists."""

from __future__ import annotations

import uuid

from rabbit_harness import Deploy, Rabbit


def test_a_refused_worker_says_so_each_attempt_and_consumes_once_the_user_exists(
        rabbit: Rabbit, deploy: Deploy) -> None:
    # Given a worker whose user does not exist yet on RabbitMQ
    user, password = f"u-{uuid.uuid4().hex[:8]}", "not-yet-s3cret"
    url = rabbit.url().replace("guest:guest@", f"{user}:{password}@")
    world = deploy()
    worker = world.start_worker("-c", "2", broker_url=url)
    try:
        # Then each process says, once per attempt, that RabbitMQ refused it and why,
        # with the password masked, and no process crashes or is restarted
        worker.wait_for_log("(attempt 2)", 2, timeout=20)
        log = worker.log()
        assert f"refused by the broker amqp://{user}:***@" in log
        assert "ACCESS_REFUSED" in log
        assert password not in log
        assert "Traceback" not in log
        assert "died" not in log
        assert len(worker.children()) == 2

        # When the operator creates the user, the worker goes on by itself
        rabbit.ctl("add_user", user, password)
        rabbit.ctl("set_permissions", "-p", rabbit.vhost, user, ".*", ".*", ".*")
        worker.wait_for_log(" ready: consuming ", 2, timeout=30)
        assert world.tasks.record.delay("after-the-fix").get(timeout=20) == "after-the-fix"
    finally:
        if user in rabbit.ctl("list_users"):
            rabbit.ctl("delete_user", user)
