"""The ``cyclevos`` command line: segment, batch, demo, eval, erf, train, convert.

Errors in the input (a bad video, a mask of the wrong size, missing weights...) print one line naming the
problem and the fix, and exit with code 2; an interrupted run exits 130 and leaves no output that looks
complete. ``app`` holds the command group, ``options`` what the commands share, ``segment`` and ``tools``
the commands (imported here so that they register with the group).
"""

from . import segment, tools  # noqa: F401  (registers the commands)
from .app import keep_freed_memory, main

__all__ = ["keep_freed_memory", "main"]
