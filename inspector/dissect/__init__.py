"""Protocol dissectors and payload detectors (see docs/ARCHITECTURE.md, "dissect")."""

from __future__ import annotations

import collections


class ErrorCounts(collections.Counter):
    """A ``collections.Counter`` of failure reasons, built without ``Counter.__init__``.

    Every flow's namer, media state and QUIC collector keeps one and most stay empty;
    ``Counter.__init__`` (a Python-level ``update`` call) cost more than the rest of their
    construction. Behaves as a Counter in every other respect.
    """

    __slots__ = ()
    __init__ = dict.__init__
