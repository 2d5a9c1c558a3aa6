"""Remote control of the workers: ``app.control`` (``client.Control``), ``inspect()``
(``inspect.Inspect``), the wire format (``mailbox``), and the workers' side
(``commands``, ``listener``)."""

from celeriac.control.client import Control
from celeriac.control.inspect import Inspect

__all__ = ["Control", "Inspect"]
