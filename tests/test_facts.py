"""The flow facts' value semantics (facts.py)."""

from __future__ import annotations

import dataclasses

import pytest

from inspector.facts import DetectorHit


def test_a_hit_compares_and_hashes_as_the_tuple_of_its_fields():
    """``DetectorHit`` writes its own ``__eq__`` and ``__hash__`` (native code when compiled):
    they are what ``dataclass`` makes, so hits key the classifier's cache as before."""
    hit = DetectorHit("stun", "zoom", "stun attr=0x0101", 3)
    fields = dataclasses.astuple(hit)
    assert fields == ("stun", "zoom", "stun attr=0x0101", 3)
    assert hit == DetectorHit(*fields)
    assert hash(hit) == hash(DetectorHit(*fields)) == hash(fields)
    assert {(hit,): "verdict"}[(DetectorHit(*fields),)] == "verdict"
    for k in range(4):
        changed = list(fields)
        changed[k] = changed[k] + 1 if isinstance(changed[k], int) else changed[k] + "x"
        assert hit != DetectorHit(*changed)
    assert hit != fields  # another class never equals a hit
    assert hit.__eq__(fields) is NotImplemented


def test_a_hit_stays_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        DetectorHit("rtp").packets = 2  # type: ignore[misc]
