"""``python -m celeriac``: the same as the ``celeriac`` command."""

from celeriac.cli.main import main

main()
