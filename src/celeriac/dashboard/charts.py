"""The geometry of the dashboard's pictures, for the templates to draw as inline SVG.

The pages carry their charts as SVG made on the server: no chart library, no script
needed to see them, and a live refresh redraws them with the rest of the fragment. The
arithmetic (scales, bar sizes, polyline points, the layers of a workflow graph) lives
here as plain typed functions; the jinja macros in ``templates/_charts.html`` only
turn the shapes into elements.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


def nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 times a power of ten that is at least ``value``
    (at least 1): the top of a count axis people can read at a glance."""
    if value <= 1:
        return 1.0
    power = 10.0 ** math.floor(math.log10(value))
    for step in (1.0, 2.0, 2.5, 5.0, 10.0):
        if value <= step * power:
            return step * power
    return 10.0 * power  # not reached: value <= 10 * power always holds


def _count_label(value: float) -> str:
    return f"{value:g}" if value < 10_000 else f"{value / 1000:g}k"


@dataclass(frozen=True, slots=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    kind: str  # "succeeded" or "failed": the CSS class that colours it
    title: str  # the tooltip


@dataclass(frozen=True, slots=True)
class Tick:
    position: float  # x for the time axis, y for the value axis
    label: str


@dataclass(slots=True)
class Chart:
    """One chart's shapes in a ``width`` x ``height`` box (plot area plus margins)."""

    width: int
    height: int
    left: int  # the plot area starts here (room for the value labels)
    bottom: int  # and ends here (room for the time labels below)
    bars: list[Bar] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)  # polyline "x,y x,y ..." strings
    y_ticks: list[Tick] = field(default_factory=list)
    x_ticks: list[Tick] = field(default_factory=list)
    empty: bool = True  # nothing to draw: the template says so instead
    succeeded: int = 0  # the totals drawn, for the chart's label (and tests)
    failed: int = 0


_WIDTH, _HEIGHT, _LEFT, _TOP, _BOTTOM_MARGIN = 560, 150, 40, 8, 18
_LABEL_WIDTH = 30  # of an HH:MM time label


def _time_ticks(starts: Sequence[float], left: float, step_x: float, every: int
                ) -> list[Tick]:
    ticks = []
    for index in range(0, len(starts), every):
        position = left + index * step_x
        if position + _LABEL_WIDTH > _WIDTH:
            break  # a label cut by the edge reads as a different time
        ticks.append(Tick(position, time.strftime("%H:%M", time.gmtime(starts[index]))))
    return ticks


def throughput_chart(points: Sequence[Mapping[str, Any]]) -> Chart:
    """Stacked bars per time bucket: succeeded (below) and failed (above)."""
    bottom = _HEIGHT - _BOTTOM_MARGIN
    chart = Chart(_WIDTH, _HEIGHT, _LEFT, bottom)
    if not points:
        return chart
    totals = [int(p.get("succeeded", 0)) + int(p.get("failed", 0)) for p in points]
    chart.succeeded = sum(int(p.get("succeeded", 0)) for p in points)
    chart.failed = sum(int(p.get("failed", 0)) for p in points)
    top = nice_ceiling(max(totals))
    plot_height = bottom - _TOP
    step_x = (_WIDTH - _LEFT) / len(points)
    width = max(step_x - 1.0, 1.0)
    for index, point in enumerate(points):
        x = _LEFT + index * step_x
        base = float(bottom)
        when = time.strftime("%H:%M:%S", time.gmtime(float(point["t"])))
        for kind in ("succeeded", "failed"):
            count = int(point.get(kind, 0))
            if count <= 0:
                continue
            height = count / top * plot_height
            base -= height
            chart.bars.append(Bar(round(x, 1), round(base, 1), round(width, 1),
                                  round(height, 1), kind, f"{when} UTC: {count} {kind}"))
    chart.empty = not chart.bars
    chart.y_ticks = [Tick(_TOP, _count_label(top)), Tick(_TOP + plot_height / 2,
                                                          _count_label(top / 2)),
                     Tick(bottom, "0")]
    chart.x_ticks = _time_ticks([float(p["t"]) for p in points], _LEFT, step_x,
                                max(len(points) // 6, 1))
    return chart


def failure_rate_chart(points: Sequence[Mapping[str, Any]]) -> Chart:
    """The share of finished tasks that failed per bucket, 0-100 %, as a line; a bucket
    where nothing finished breaks the line rather than pretending to be 0 %."""
    bottom = _HEIGHT - _BOTTOM_MARGIN
    chart = Chart(_WIDTH, _HEIGHT, _LEFT, bottom)
    if not points:
        return chart
    plot_height = bottom - _TOP
    step_x = (_WIDTH - _LEFT) / len(points)
    segment: list[str] = []
    for index, point in enumerate(points):
        succeeded, failed = int(point.get("succeeded", 0)), int(point.get("failed", 0))
        if succeeded + failed == 0:
            if segment:
                chart.lines.append(" ".join(segment))
                segment = []
            continue
        rate = failed / (succeeded + failed)
        x = _LEFT + index * step_x + step_x / 2
        segment.append(f"{x:.1f},{bottom - rate * plot_height:.1f}")
    if segment:
        chart.lines.append(" ".join(segment))
    # A lone point would draw nothing as a polyline: widen it to a short flat stroke.
    chart.lines = [_widen(line, step_x / 2) for line in chart.lines]
    chart.empty = not chart.lines
    chart.y_ticks = [Tick(_TOP, "100%"), Tick(_TOP + plot_height / 2, "50%"),
                     Tick(bottom, "0%")]
    chart.x_ticks = _time_ticks([float(p["t"]) for p in points], _LEFT, step_x,
                                max(len(points) // 6, 1))
    return chart


def _widen(line: str, half: float) -> str:
    if " " in line:
        return line
    x, y = (float(part) for part in line.split(","))
    return f"{x - half:.1f},{y:.1f} {x + half:.1f},{y:.1f}"


@dataclass(frozen=True, slots=True)
class Sparkline:
    width: int
    height: int
    points: str  # polyline points; "" when there is no history
    area: str  # the same line closed along the bottom, for a light fill
    peak: int


def sparkline(history: Sequence[Sequence[float]], width: int = 120, height: int = 24
              ) -> Sparkline:
    """A queue's depth over time (``[[t, ready], ...]``, oldest first) in a small box."""
    if not history:
        return Sparkline(width, height, "", "", 0)
    values = [float(sample[1]) for sample in history]
    peak = max(values)
    scale = (height - 2) / peak if peak > 0 else 0.0
    step = width / max(len(values) - 1, 1)
    coords = [(index * step, height - 1 - value * scale) for index, value in enumerate(values)]
    if len(coords) == 1:
        coords.append((float(width), coords[0][1]))
    points = " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
    area = f"{coords[0][0]:.1f},{height} {points} {coords[-1][0]:.1f},{height}"
    return Sparkline(width, height, points, area, int(peak))


@dataclass(frozen=True, slots=True)
class GraphNode:
    id: str
    label: str
    state: str
    x: float
    y: float
    current: bool  # the task whose page this is


@dataclass(frozen=True, slots=True)
class GraphEdge:
    path: str  # an SVG path: a curve from the parent's right side to the child's left


@dataclass(frozen=True, slots=True)
class Graph:
    width: int
    height: int
    nodes: list[GraphNode]
    edges: list[GraphEdge]
    node_width: int
    node_height: int


_NODE_W, _NODE_H, _GAP_X, _GAP_Y, _PAD = 170, 34, 36, 10, 4


def _depths(ids: Sequence[str], edges: Sequence[Sequence[str]]) -> dict[str, int]:
    """Each node's layer: 0 for those without a parent in the graph, else one more than
    its deepest parent (a longest path, so a chord's callback sits after its header).
    Bounded by the node count, so a cycle in bad data cannot loop forever."""
    parents: dict[str, list[str]] = defaultdict(list)
    for parent, child in edges:
        parents[child].append(parent)
    depth = dict.fromkeys(ids, 0)
    for _ in range(len(ids)):
        changed = False
        for child, its_parents in parents.items():
            want = max(depth.get(parent, 0) for parent in its_parents) + 1
            if child in depth and depth[child] < want and want < len(ids):
                depth[child] = want
                changed = True
        if not changed:
            break
    return depth


def workflow_graph(family: Mapping[str, Any], current: str) -> Graph | None:
    """Lay out a task's family (``{"nodes": [...], "edges": [[parent, child], ...]}``)
    left to right, a column per generation; None when the task is alone."""
    nodes: list[Mapping[str, Any]] = list(family.get("nodes") or [])
    if len(nodes) < 2:
        return None
    ids = [str(node["id"]) for node in nodes]
    known = set(ids)
    edges = [(str(p), str(c)) for p, c in family.get("edges") or []
             if str(p) in known and str(c) in known]
    depth = _depths(ids, edges)
    rows: dict[int, int] = defaultdict(int)
    placed: dict[str, GraphNode] = {}
    for node, node_id in zip(nodes, ids, strict=True):
        column = depth[node_id]
        row = rows[column]
        rows[column] += 1
        name = str(node.get("name") or "?")
        placed[node_id] = GraphNode(
            node_id, name.rsplit(".", 1)[-1][:22], str(node.get("state") or "PENDING"),
            _PAD + column * (_NODE_W + _GAP_X), _PAD + row * (_NODE_H + _GAP_Y),
            node_id == current)
    lines = []
    for parent_id, child_id in edges:
        parent, child = placed[parent_id], placed[child_id]
        x1, y1 = parent.x + _NODE_W, parent.y + _NODE_H / 2
        x2, y2 = child.x, child.y + _NODE_H / 2
        middle = (x1 + x2) / 2
        lines.append(GraphEdge(f"M{x1:.0f},{y1:.0f} C{middle:.0f},{y1:.0f} "
                               f"{middle:.0f},{y2:.0f} {x2:.0f},{y2:.0f}"))
    columns = max(depth.values()) + 1
    tallest = max(rows.values())
    return Graph(2 * _PAD + columns * _NODE_W + (columns - 1) * _GAP_X,
                 2 * _PAD + tallest * _NODE_H + (tallest - 1) * _GAP_Y,
                 list(placed.values()), lines, _NODE_W, _NODE_H)
