"""The pages' pure parts: how values read, the tasks page's query, the charts' geometry.

The pages themselves are driven in a browser against a real worker (tests/browser);
these pin the arithmetic and the parsing, where a wrong edge case would not show up in
a screenshot.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from celeriac.dashboard import charts
from celeriac.dashboard.pages import BadQuery, duration, query_url, task_query

NOW = 1_800_000_000.0


@pytest.mark.parametrize(("seconds", "text"), [
    (None, "\N{EN DASH}"), (0, "0s"), (0.00004, "<0.1ms"), (0.0042, "4.2ms"),
    (0.12, "120ms"), (4.25, "4.2s"), (185, "3m 05s"), (3 * 3600 + 120, "3h 02m"),
    (3 * 86_400 + 7200, "3d 02h"), (-2.5, "-2.5s"), (float("nan"), "\N{EN DASH}"),
])
def test_durations_read_at_the_precision_that_matters(seconds: float | None,
                                                      text: str) -> None:
    assert duration(seconds) == text


def test_the_tasks_form_becomes_a_store_query() -> None:
    query = task_query({"name": " proj.add ", "state": "failure", "within": "1h",
                        "sort": "runtime", "order": "asc", "offset": "50",
                        "limit": "25", "text": "", "until": "2027-01-15T08:00"}, NOW)
    assert (query.name, query.state, query.sort, query.descending) == \
        ("proj.add", "FAILURE", "runtime", False)
    assert (query.offset, query.limit, query.text) == (50, 25, None)
    assert query.since == NOW - 3600
    assert query.until == datetime(2027, 1, 15, 8, 0, tzinfo=UTC).timestamp()  # as UTC
    assert task_query({}, NOW).limit == 50


@pytest.mark.parametrize(("params", "message"), [
    ({"state": "DONE"}, "unknown state 'DONE'"),
    ({"sort": "args"}, "cannot sort by 'args'"),
    ({"order": "up"}, "order must be asc or desc"),
    ({"within": "2y"}, "within must be one of"),
    ({"limit": "1000"}, "limit must be between 1 and 500"),
    ({"offset": "x"}, "offset must be a whole number"),
    ({"since": "yesterday"}, "since must be a date and time"),
])
def test_a_bad_search_says_which_field(params: dict[str, str], message: str) -> None:
    with pytest.raises(BadQuery, match=message):
        task_query(params, NOW)


def test_links_change_one_field_and_keep_the_rest() -> None:
    params = {"state": "FAILURE", "offset": "50", "fragment": "1", "name": ""}
    assert query_url("/tasks", params, offset=100) == "/tasks?state=FAILURE&offset=100"
    assert query_url("/tasks", params, offset=None, sort="name") == \
        "/tasks?state=FAILURE&sort=name"
    assert query_url("/tasks", {}) == "/tasks"


@pytest.mark.parametrize(("value", "top"), [(0, 1), (1, 1), (3, 5), (7, 10), (11, 20),
                                            (24, 25), (26, 50), (4200, 5000)])
def test_a_count_axis_ends_on_a_round_number(value: float, top: float) -> None:
    assert charts.nice_ceiling(value) == top


def test_throughput_bars_stack_failed_on_succeeded() -> None:
    points = [{"t": NOW + 30 * i, "succeeded": s, "failed": f}
              for i, (s, f) in enumerate([(0, 0), (8, 2), (4, 0)])]
    chart = charts.throughput_chart(points)
    assert (chart.succeeded, chart.failed, chart.empty) == (12, 2, False)
    assert [bar.kind for bar in chart.bars] == ["succeeded", "failed", "succeeded"]
    ok, failed, second = chart.bars
    assert failed.y + failed.height == pytest.approx(ok.y, abs=0.1)  # on top of it
    assert ok.height == pytest.approx(2 * second.height, abs=0.1)  # to scale
    assert ok.y + ok.height == chart.bottom
    assert chart.y_ticks[0].label == "10"
    assert charts.throughput_chart([]).empty


def test_the_failure_rate_line_breaks_where_nothing_finished() -> None:
    points = [{"t": NOW + 30 * i, "succeeded": s, "failed": f}
              for i, (s, f) in enumerate([(1, 1), (3, 1), (0, 0), (0, 2)])]
    chart = charts.failure_rate_chart(points)
    assert len(chart.lines) == 2
    first, lone = chart.lines
    assert len(first.split()) == 2
    assert len(lone.split()) == 2  # a single bucket is widened into a visible stroke
    assert lone.split()[0].split(",")[1] == f"{charts._TOP:.1f}"  # 100 % at the top
    assert charts.failure_rate_chart([{"t": NOW, "succeeded": 0, "failed": 0}]).empty


def test_time_labels_stay_inside_the_chart() -> None:
    points = [{"t": NOW + 30 * i, "succeeded": 1, "failed": 0} for i in range(60)]
    chart = charts.throughput_chart(points)
    assert chart.x_ticks
    assert all(tick.position + charts._LABEL_WIDTH <= chart.width for tick in chart.x_ticks)


def test_a_sparkline_scales_to_its_peak() -> None:
    line = charts.sparkline([[NOW, 0], [NOW + 3, 10], [NOW + 6, 5]], width=100, height=22)
    assert line.peak == 10
    assert line.points == "0.0,21.0 50.0,1.0 100.0,11.0"
    assert charts.sparkline([]).points == ""
    assert len(charts.sparkline([[NOW, 0]]).points.split()) == 2


def test_a_workflow_is_laid_out_a_column_per_generation() -> None:
    family = {"nodes": [{"id": "a", "name": "proj.first", "state": "SUCCESS"},
                        {"id": "b", "name": "proj.left", "state": "SUCCESS"},
                        {"id": "c", "name": "proj.right", "state": "FAILURE"},
                        {"id": "d", "name": "proj.join", "state": "PENDING"}],
              "edges": [["a", "b"], ["a", "c"], ["b", "d"], ["c", "d"], ["x", "d"]]}
    graph = charts.workflow_graph(family, current="c")
    assert graph is not None
    at = {node.id: node for node in graph.nodes}
    assert at["a"].x < at["b"].x == at["c"].x < at["d"].x
    assert at["b"].y != at["c"].y
    assert at["c"].current
    assert not at["a"].current
    assert at["a"].label == "first"
    assert len(graph.edges) == 4  # the edge from an unknown parent is left out
    assert graph.width >= at["d"].x + graph.node_width


def test_a_lone_task_has_no_graph_and_a_cycle_does_not_hang() -> None:
    assert charts.workflow_graph({"nodes": [{"id": "a"}], "edges": []}, "a") is None
    cycle = {"nodes": [{"id": "a"}, {"id": "b"}], "edges": [["a", "b"], ["b", "a"]]}
    graph = charts.workflow_graph(cycle, "a")
    assert graph is not None
    assert len(graph.nodes) == 2
