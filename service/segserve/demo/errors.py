"""The one exception the demo turns into a one-line message and a non-zero exit."""

from __future__ import annotations


class DemoError(Exception):
    """Something the user can fix (a missing file, no webcam, a server that is down); str() says what."""
