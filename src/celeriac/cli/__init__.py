"""celeriac cli."""
