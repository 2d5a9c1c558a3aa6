"""Inspect and control on real worker processes, on PostgreSQL (see control_cases.py):
requests and replies travel on the broker's bus table, woken by NOTIFY; rate limits set
at run time are kept in the broker's bucket tables."""

from __future__ import annotations

import control_cases
from pg_harness import PostgreSQLDeployment


def test_two_nodes_answer_inspect_and_obey_control(deployment: PostgreSQLDeployment) -> None:
    control_cases.two_nodes_answer_and_obey(deployment)
