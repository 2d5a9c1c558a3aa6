"""Typed task calls: a type checker catches add.delay("x") where add(x: int, y: int)."""

import re
import subprocess
import sys
from pathlib import Path

CHECKED = Path(__file__).with_name("typed_calls.py")


def test_mypy_flags_exactly_the_wrong_calls() -> None:
    expected = {number for number, line in enumerate(CHECKED.read_text().splitlines(), 1)
                if "# E:" in line}
    run = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--no-incremental",
                          "--follow-imports=silent", str(CHECKED)],
                         capture_output=True, text=True, timeout=300, check=False)
    flagged = {int(match) for match in re.findall(r"typed_calls\.py:(\d+): error", run.stdout)}
    assert flagged == expected, run.stdout
