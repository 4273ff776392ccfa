"""``fastinit.positional_constructor`` and the hot-path constructors built with it."""

from __future__ import annotations

import dataclasses

import pytest

from inspector import classify, fastinit, naming, payloads
from inspector.dissect import dns, media, quic, rtp, stun, tls
from inspector.facts import DetectorHit, FlowFacts


@dataclasses.dataclass(frozen=True, slots=True)
class _Pair:
    left: int
    right: str


@dataclasses.dataclass(frozen=True, slots=True)
class _Checked:
    value: int

    def __post_init__(self) -> None:
        if self.value < 0:
            raise ValueError("negative")


@dataclasses.dataclass(frozen=True)
class _NoSlots:
    value: int


def test_fills_every_slot_and_equals_the_dataclass() -> None:
    build = fastinit.positional_constructor(_Pair)
    assert build is not _Pair
    made = build(1, "a")
    assert type(made) is _Pair and made == _Pair(1, "a")
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.left = 2  # type: ignore[misc]


def test_wrong_arity_raises_as_the_dataclass_does() -> None:
    build = fastinit.positional_constructor(_Pair)
    with pytest.raises(TypeError):
        build(1)
    with pytest.raises(TypeError):
        build(1, "a", "extra")


def test_classes_it_cannot_fill_get_their_own_constructor() -> None:
    # __post_init__ must run; without slots there are no descriptors to fill.
    assert fastinit.positional_constructor(_Checked) is _Checked
    assert fastinit.positional_constructor(_NoSlots) is _NoSlots


HOT_PATH_VALUES = [
    (stun._new_message, stun.StunMessage, (1, 1, "request", b"t" * 12, False, ((6, b"u"),), 28, None)),
    (dns._new_question, dns.DnsQuestion, ("example.com", 1)),
    (dns._new_record, dns.DnsRecord, ("example.com", 1, 60, "192.0.2.1", ("192.0.2.1",))),
    (dns._new_message, dns.DnsMessage, (7, True, 0, (), ())),
    (quic._new_long_header, quic.LongHeader, (0, 1200, 30, 0xC3, 1, "initial", b"d" * 8, b"", b"")),
    (tls._new_client_hello, tls.ClientHello, ("example.com", ("h2",), 0x0303, (0x0304,), False, (), (0, 16))),
    (naming._new_naming, naming.FlowNaming, ("tls", "example.com", "sni", ("example.com",), ())),
    (payloads._new_facts, FlowFacts, (
        "udp", "10.0.0.1", 50000, "192.0.2.1", 3478, "stun", "turn.example", "stun-realm",
        "dns.example", (DetectorHit("stun"),), (("stun_realm", "turn.example"),), 1, 2,
    )),
]  # fmt: skip


@pytest.mark.parametrize("build, cls, values", HOT_PATH_VALUES, ids=lambda v: getattr(v, "__name__", ""))
def test_hot_path_constructors_equal_their_class(build, cls, values) -> None:
    # The call sites pass every field positionally, in field order: the same object results.
    assert len(values) == len(dataclasses.fields(cls))
    made = build(*values)
    assert type(made) is cls
    assert made == cls(*values)


@dataclasses.dataclass(frozen=True, slots=True, init=False)
class _OwnInit:
    left: int
    right: str = "r"
    more: tuple = ()

    def __init__(self, left: int, right: str = "r", more: tuple = ()) -> None:
        self.left = left  # type: ignore[misc]
        self.right = right  # type: ignore[misc]
        self.more = more  # type: ignore[misc]


def test_frozen_init_makes_an_own_init_class_constructible_and_still_frozen() -> None:
    # Interpreted, the class's own assignments would meet the frozen __setattr__.
    with pytest.raises(dataclasses.FrozenInstanceError):
        _OwnInit(1)
    fastinit.frozen_init(_OwnInit)
    made = _OwnInit(1)
    assert (made.left, made.right, made.more) == (1, "r", ())
    assert _OwnInit(2, right="x", more=(3,)) == _OwnInit(2, "x", (3,)) != made
    assert hash(made) == hash(_OwnInit(1)) and dataclasses.replace(made, left=5).left == 5
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.left = 2  # type: ignore[misc]
    with pytest.raises(TypeError):
        _OwnInit()  # type: ignore[call-arg]


#: Each hot class with values of its fields' types (compiled, the native __init__ checks them).
OWN_INIT_VALUES = [
    (stun.StunMessage, (1, 1, "request", b"t" * 12, False, ((6, b"u"),), 28, True)),
    (tls.ClientHello, ("example.com", ("h2",), 0x0303, (0x0304,), True, (1,), (0, 16))),
    (tls.ServerHello, (0x0303, 0x0304, 0x1301, False, (43,))),
    (naming.FlowNaming, ("tls", "example.com", "sni", ("example.com",), (("alpn", "h2"),))),
    (FlowFacts, (
        "udp", "10.0.0.1", 50000, "192.0.2.1", 3478, "stun", "turn.example", "stun-realm",
        "dns.example", (DetectorHit("stun"),), (("stun_realm", "turn.example"),), 1, 2,
    )),
    (DetectorHit, ("zoom-media", "zoom", "zoom sfu", 4)),
    (rtp.RtpHeader, (111, True, 65535, 1 << 31, 0xDEADBEEF, 1, False, True, 0xBEDE, 16, 160)),
    (rtp.RtcpPacket, (200, 1, 52, 7, 1 << 40, 1000, 50, 8000, (rtp.ReportBlock(8, 1, 2, 3, 4, 5, 6),))),
    (quic.InitialKeys, (b"k" * 16, b"i" * 12, b"h" * 16)),
    (media.DtlsRecord, (22, 0xFEFD, 0, 100, 1)),
    (naming.DnsName, ("example.com", ("cdn.example.net",), 5)),
    (dns.DnsMessage, (7, True, 0, (), ())),
    (classify.Verdict, ("zoom", "Zoom", "conferencing", "media", "media", "sni:zoom.us", "high", "first")),
]  # fmt: skip


@pytest.mark.parametrize("cls, values", OWN_INIT_VALUES, ids=lambda v: getattr(v, "__name__", ""))
def test_hot_classes_build_by_position_and_keyword_and_stay_frozen(cls, values) -> None:
    # Compiled, their own __init__ is native; interpreted, frozen_init gave them the generated one.
    fields = dataclasses.fields(cls)
    made = cls(*values)
    assert [getattr(made, f.name) for f in fields] == list(values)
    assert cls(**{f.name: v for f, v in zip(fields, values)}) == made
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(made, fields[0].name, values[1])
    required = [f for f in fields if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    defaulted = cls(*values[: len(required)])
    assert all(getattr(defaulted, f.name) == f.default for f in fields[len(required):])


def test_running_streams_pickle_with_every_attribute() -> None:
    # A parallel run's RTP worker returns its stream state pickled (parallel.py), compiled or not.
    import pickle

    import numpy as np

    from inspector.media_stats import RunningStreams

    streams = RunningStreams(2_000_000_000)
    streams._streams = 3
    streams._missing = np.array([5, 7], dtype=np.int64)
    streams._payload_types = {0: {111: 4}}
    copy = pickle.loads(pickle.dumps(streams, protocol=pickle.HIGHEST_PROTOCOL))
    assert type(copy) is RunningStreams
    state, copied = fastinit.attribute_state(streams), fastinit.attribute_state(copy)
    assert state.keys() == copied.keys() and len(state) > 10
    assert copy.max_gap_ns == 2_000_000_000 and copy._streams == 3
    assert copy._missing.tolist() == [5, 7] and copy._payload_types == {0: {111: 4}}
