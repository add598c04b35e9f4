"""The one exception type users see: a one-line message naming the thing and the fix."""


class CkptselError(Exception):
    """A user-facing error. ``str(err)`` is a single line: what was wrong and what to do."""
