"""User-facing errors.

Anything a user can cause (a bad config key, a missing file, a slide without µm/px) raises
:class:`HistofuseError` with one message that names the file or key and says how to fix it. The
CLI prints that message alone, without a traceback, and exits with status 2.
"""

from __future__ import annotations


class HistofuseError(Exception):
    """An error caused by the user's input, with a message that says how to fix it."""
