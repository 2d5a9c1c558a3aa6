"""``@app.task(dashboard_hide_args=True)``: a checked task option the dashboard reads."""

from __future__ import annotations

import pytest

from celeriac import App


def test_dashboard_hide_args_is_a_checked_task_option() -> None:
    app = App("hide", broker="memory://", backend="memory://")

    @app.task(dashboard_hide_args=True)
    def secret(token: str) -> None: ...

    @app.task
    def plain() -> None: ...

    assert secret.dashboard_hide_args is True
    assert secret.options.dashboard_hide_args
    assert plain.dashboard_hide_args is False
    with pytest.raises(TypeError, match="dashboard_hide_args must be True or False"):
        app.task(dashboard_hide_args="yes")
