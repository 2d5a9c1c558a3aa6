"""A worker node: one ``celeriac worker`` command, its name, and its node-wide services.

See ``node.base`` for the node as services see it and ``node.agent`` for where the
services run.
"""
