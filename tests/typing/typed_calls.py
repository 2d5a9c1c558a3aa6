"""Checked by mypy in tests/typing/test_typing.py: the lines marked E must be errors."""

from celeriac import App

app = App("typing", broker="memory://")


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task
async def fetch(url: str) -> bytes:
    return url.encode()


ok_sync: int = add.delay(1, 2).get()
ok_async: bytes = fetch.delay("https://example.org").get()
add.delay("x", 2)  # E: wrong argument type
add.delay(1)  # E: missing argument
wrong: str = add.delay(1, 2).get()  # E: the result is an int
