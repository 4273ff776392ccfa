"""The live terminal view of ``inspector live``: current call, its duration, top destinations by
bytes sent, telemetry seen. A preview; the tables written at the end are the verdict.

``LiveView.update`` is the pipeline's ``on_batch`` hook (``pipeline.BatchProgress``): it runs on
the pipeline's thread, reads the flow table's active flows and the flows that just ended, and
swaps in an immutable ``ViewSnapshot``. rich's refresh thread renders the latest snapshot about
twice a second (``__rich__``), so the two threads share only one reference.

Call preview rule: a *media flow* is one the classifier judges call media, the same test as
rule 1 of ``inspector.sessions`` (conferencing media/relay, generic ``webrtc``, or conferencing
with a media app_protocol), with at least ``MIN_MEDIA_PACKETS`` packets (a lone STUN probe is
not a call). A call is running while some media flow sent or received a packet in the last
``MAX_GAP_S`` seconds of capture time (60 s, the sessions stage's default and why: RTCP and
STUN consent keep a muted call's media path alive, RFC 3550 §6.2, RFC 7675 §5.1); it started at
the first packet of its earliest media flow. Weakness: it works on whole flows, not the 100 ms
activity buckets ``sessions.build_calls`` uses, so a media flow that outlives its call (or two
calls less than a minute apart) stretch the preview's window; the written sessions.csv is exact.

"This machine" is guessed as ``sessions`` does: the client side of DNS/TLS/QUIC/HTTP flows and of
named flows is local; a flow whose server is local and whose client is not (a peer reaching in,
P2P media) is turned round, so "sent" is always what left this machine. Weakness: on a gateway
every LAN host is local.

Memory: per active flow one cached verdict; per destination of an ended flow one aggregate row
(at most ``MAX_DESTINATIONS``; beyond that, ended flows are counted in one "other" row).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

from inspector.decode import IPPROTO_TCP
from inspector.schema import CALL_MAX_GAP_S

# The call stage's own vocabulary (rule 1 of its module docstring), so the preview cannot drift.
from inspector.sessions import CLIENT_APP_PROTOCOLS, MEDIA_APP_PROTOCOLS, MEDIA_ROLES
from inspector.streaming import preview_facts

__all__ = ["LiveView", "ViewSnapshot", "CallPreview", "DestinationRow", "TelemetryRow"]

MAX_GAP_S = CALL_MAX_GAP_S
MIN_MEDIA_PACKETS = 20
MAX_DESTINATIONS = 4096
OTHER_DESTINATIONS = "(other destinations)"


@dataclass(frozen=True, slots=True)
class CallPreview:
    """The call the view sees: service id, first media packet, latest media packet (ns since the
    epoch), media flows so far."""

    service: str
    start_ns: int
    last_media_ns: int
    media_flows: int

    @property
    def duration_s(self) -> float:
        return (self.last_media_ns - self.start_ns) / 1e9


@dataclass(frozen=True, slots=True)
class DestinationRow:
    """Who received data from this machine: name (or address), verdict, bytes and flows."""

    destination: str
    service: str
    organisation: str
    kind: str
    sent_bytes: int
    received_bytes: int
    flows: int
    first_seen_ns: int
    last_seen_ns: int


@dataclass(frozen=True, slots=True)
class TelemetryRow:
    """A telemetry destination and whether data went to it while the call ran."""

    destination: str
    service: str
    organisation: str
    party: str
    sent_bytes: int
    first_seen_ns: int
    last_seen_ns: int
    during_call: bool = False


@dataclass(frozen=True, slots=True)
class ViewSnapshot:
    """Everything the view shows, frozen at one batch.

    interface        what is captured
    packets          packets read so far; active_flows, ended_flows: flow counts
    clock_ns         newest packet time seen (0 before the first packet)
    call             the running call, or None; last_call: the most recent call that ended
    destinations     top destinations by bytes sent, most first
    telemetry        telemetry destinations seen, first seen first
    """

    interface: str
    packets: int = 0
    active_flows: int = 0
    ended_flows: int = 0
    clock_ns: int = 0
    call: CallPreview | None = None
    last_call: CallPreview | None = None
    destinations: tuple[DestinationRow, ...] = ()
    telemetry: tuple[TelemetryRow, ...] = ()


@dataclass(slots=True)
class _FlowView:
    """One flow as the view counts it, from this machine's side."""

    destination: str
    service: str
    organisation: str
    kind: str
    party: str
    is_media: bool
    sent_bytes: int
    received_bytes: int
    packets: int
    first_seen_ns: int
    last_seen_ns: int


def _is_media(app_protocol: str, verdict) -> bool:
    if verdict.kind == "conferencing" and verdict.role in MEDIA_ROLES:
        return True
    if verdict.service == "webrtc":
        return True
    return verdict.kind == "conferencing" and app_protocol in MEDIA_APP_PROTOCOLS


class LiveView:
    """Feeds on ``BatchProgress`` and renders the latest ``ViewSnapshot`` with rich."""

    def __init__(self, interface: str, signatures, top: int = 8, min_interval_s: float = 0.5,
                 clock=time.monotonic) -> None:
        self.interface = interface
        self.signatures = signatures
        self.top = top
        self.min_interval_s = min_interval_s
        self._clock = clock
        self._last_update = float("-inf")
        self._snapshot = ViewSnapshot(interface)
        self._local: set[str] = set()
        # flow_id -> (facts, verdict, dissection done, packets then): reused while the flow's
        # dissection is done or it saw no new packet, so a refresh costs little on a busy link.
        self._verdicts: dict[int, tuple] = {}
        self._ended: dict[str, DestinationRow] = {}
        self._telemetry: dict[str, TelemetryRow] = {}
        self._ended_flows = 0
        self._call: CallPreview | None = None
        self._last_call: CallPreview | None = None

    @property
    def snapshot(self) -> ViewSnapshot:
        return self._snapshot

    # -- pipeline side -----------------------------------------------------------------------

    def update(self, progress, force: bool = False) -> None:
        """``on_batch`` hook: fold in the flows that ended; rebuild the snapshot at most every
        ``min_interval_s`` (always when ``force``)."""
        if progress.ended:
            self._fold_ended(progress.ended)
        now = self._clock()
        if not force and now - self._last_update < self.min_interval_s:
            return
        self._last_update = now
        self._snapshot = self._build(progress)

    def _classify(self, pairs: list[tuple]) -> list[tuple]:
        """(facts, verdict) for (flow, facts) pairs; verdicts need a signature set."""
        from inspector.classify import Verdict, classify_all

        facts = [f for _, f in pairs]
        if self.signatures is None or not facts:
            return [(f, Verdict()) for f in facts]
        return list(zip(facts, classify_all(facts, self.signatures)))

    def _learn_local(self, facts) -> None:
        if facts.app_protocol in CLIENT_APP_PROTOCOLS or facts.server_name:
            self._local.add(facts.client_ip)

    def _flow_view(self, flow, facts, verdict) -> _FlowView:
        if facts is None:
            from inspector.flows import flow_endpoints

            client_ip, server_ip = flow_endpoints(flow)
            turned = server_ip in self._local and client_ip not in self._local
            destination, app_protocol = (client_ip if turned else server_ip), ""
        else:
            client_ip, server_ip = facts.client_ip, facts.server_ip
            turned = server_ip in self._local and client_ip not in self._local
            # A DNS flow's server_name is the name asked about; the data went to the resolver.
            named = not turned and facts.app_protocol != "dns"
            destination = (facts.server_name if named else "") or (client_ip if turned else server_ip)
            app_protocol = facts.app_protocol
        sent, received = flow.client_to_server_bytes, flow.server_to_client_bytes
        if turned:
            sent, received = received, sent
        return _FlowView(
            destination=destination,
            service=verdict.service if verdict else "",
            organisation=verdict.organisation if verdict else "",
            kind=verdict.kind if verdict else "",
            party=getattr(verdict, "party", "") if verdict else "",
            is_media=bool(verdict) and _is_media(app_protocol, verdict),
            sent_bytes=sent,
            received_bytes=received,
            packets=flow.client_to_server_packets + flow.server_to_client_packets,
            first_seen_ns=flow.first_seen_ns,
            last_seen_ns=flow.last_seen_ns,
        )

    def _fold_ended(self, ended: list[tuple]) -> None:
        with_facts = [(fl, fa) for fl, fa in ended if fa is not None]
        for _, fa in with_facts:
            self._learn_local(fa)
        classified = {id(fa): v for fa, v in self._classify(with_facts)}
        for flow, facts in ended:
            self._ended_flows += 1
            cached = self._verdicts.pop(flow.flow_id, None)
            verdict = classified.get(id(facts)) if facts is not None else None
            if verdict is None and cached is not None:
                verdict = cached[1]
            fv = self._flow_view(flow, facts, verdict)
            self._note_call(fv)
            self._note_telemetry(fv)
            key = fv.destination
            if key not in self._ended and len(self._ended) >= MAX_DESTINATIONS:
                key = OTHER_DESTINATIONS
                fv.service = fv.organisation = fv.kind = ""
            self._ended[key] = _add_row(self._ended.get(key), key, fv)

    def _note_call(self, fv: _FlowView) -> None:
        if not fv.is_media or fv.packets < MIN_MEDIA_PACKETS:
            return
        call = self._call
        if call is not None and fv.first_seen_ns - call.last_media_ns > MAX_GAP_S * 1e9:
            self._last_call, call = call, None
        if call is None:
            self._call = CallPreview(fv.service, fv.first_seen_ns, fv.last_seen_ns, 1)
            return
        self._call = CallPreview(
            call.service if call.service and call.service != "webrtc" else (fv.service or call.service),
            min(call.start_ns, fv.first_seen_ns),
            max(call.last_media_ns, fv.last_seen_ns),
            call.media_flows + 1,
        )

    def _note_telemetry(self, fv: _FlowView) -> None:
        if fv.kind != "telemetry":
            return
        old = self._telemetry.get(fv.destination)
        if old is None:
            if len(self._telemetry) >= MAX_DESTINATIONS:
                return
            self._telemetry[fv.destination] = TelemetryRow(
                fv.destination, fv.service, fv.organisation, fv.party, fv.sent_bytes, fv.first_seen_ns,
                fv.last_seen_ns)
        else:
            self._telemetry[fv.destination] = replace(
                old, sent_bytes=old.sent_bytes + fv.sent_bytes, first_seen_ns=min(old.first_seen_ns, fv.first_seen_ns),
                last_seen_ns=max(old.last_seen_ns, fv.last_seen_ns))

    def _build(self, progress) -> ViewSnapshot:
        table = progress.table
        active = table.active_flows()
        payloads = progress.payloads
        pairs: list[tuple] = []
        need: list[tuple] = []
        for flow in active:
            cached = self._verdicts.get(flow.flow_id)
            packets = flow.client_to_server_packets + flow.server_to_client_packets
            if cached is not None and (cached[2] or cached[3] == packets):
                pairs.append((flow, cached[:2]))
                continue
            facts = preview_facts(payloads, flow) if payloads is not None and flow.state is not None else None
            if facts is not None:
                self._learn_local(facts)
            elif flow.proto == IPPROTO_TCP:
                # Without payload facts: the side that opened a TCP connection is taken as local.
                from inspector.flows import flow_endpoints

                self._local.add(flow_endpoints(flow)[0])
            need.append((flow, facts))
        if need:
            with_facts = [(fl, fa) for fl, fa in need if fa is not None]
            classified = {id(fa): v for fa, v in self._classify(with_facts)}
            for flow, facts in need:
                verdict = classified.get(id(facts)) if facts is not None else None
                done = flow.state is None or flow.state.done
                packets = flow.client_to_server_packets + flow.server_to_client_packets
                self._verdicts[flow.flow_id] = (facts, verdict, done, packets)
                pairs.append((flow, (facts, verdict)))

        # Fold the active flows over the ended aggregates, without changing the latter.
        rows = dict(self._ended)
        telemetry_saved = dict(self._telemetry)
        call_saved, last_saved = self._call, self._last_call
        for flow, (facts, verdict) in sorted(pairs, key=lambda p: p[0].first_seen_ns):
            fv = self._flow_view(flow, facts, verdict)
            self._note_call(fv)
            self._note_telemetry(fv)
            rows[fv.destination] = _add_row(rows.get(fv.destination), fv.destination, fv)
        call, last_call = self._call, self._last_call
        calls = [c for c in (call, last_call) if c is not None]
        telemetry = tuple(
            replace(t, during_call=any(t.last_seen_ns >= c.start_ns and t.first_seen_ns <= c.last_media_ns for c in calls))
            for t in sorted(self._telemetry.values(), key=lambda t: t.first_seen_ns)
        )
        self._telemetry, self._call, self._last_call = telemetry_saved, call_saved, last_saved

        clock_ns = max((f.last_seen_ns for f in active), default=self._snapshot.clock_ns)
        if call is not None and clock_ns and clock_ns - call.last_media_ns > MAX_GAP_S * 1e9:
            call, last_call = None, call
        top = sorted(rows.values(), key=lambda r: (-r.sent_bytes, -r.received_bytes, r.destination))[: self.top]
        return ViewSnapshot(
            interface=self.interface,
            packets=progress.decode.packets_read,
            active_flows=len(active),
            ended_flows=self._ended_flows,
            clock_ns=clock_ns,
            call=call,
            last_call=last_call,
            destinations=tuple(top),
            telemetry=telemetry,
        )

    # -- rendering side ----------------------------------------------------------------------

    def __rich__(self):
        return render(self._snapshot)


def _add_row(old: DestinationRow | None, key: str, fv: _FlowView) -> DestinationRow:
    if old is None:
        return DestinationRow(key, fv.service, fv.organisation, fv.kind, fv.sent_bytes, fv.received_bytes, 1,
                              fv.first_seen_ns, fv.last_seen_ns)
    return DestinationRow(
        key,
        old.service or fv.service,
        old.organisation or fv.organisation,
        old.kind or fv.kind,
        old.sent_bytes + fv.sent_bytes,
        old.received_bytes + fv.received_bytes,
        old.flows + 1,
        min(old.first_seen_ns, fv.first_seen_ns),
        max(old.last_seen_ns, fv.last_seen_ns),
    )


def _bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"


def _clock_text(ns: int) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(ns / 1e9)) + "Z"


def render(snap: ViewSnapshot):
    """The view as rich renderables. Names come from the capture (attacker-controlled): they are
    always wrapped in ``Text``, never parsed as markup."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    head = Text()
    head.append("inspector live ", style="bold")
    head.append(f"on {snap.interface}", style="cyan")
    head.append(f"  {snap.packets:,} packets, {snap.active_flows:,} active flows, {snap.ended_flows:,} ended"
                "  (Ctrl-C to stop)")
    call_line = Text()
    if snap.call is not None:
        c = snap.call
        call_line.append("call: ", style="bold green")
        call_line.append(f"{c.service or 'unknown service'} since {_clock_text(c.start_ns)}, "
                         f"{c.duration_s:.1f} s, {c.media_flows} media flow(s)")
    else:
        call_line.append("call: none", style="bold")
        if snap.last_call is not None:
            c = snap.last_call
            call_line.append(f"  (last: {c.service or 'unknown'} {_clock_text(c.start_ns)}, {c.duration_s:.1f} s)")
    parts = [head, call_line]

    table = Table(title="Top destinations by bytes sent", title_justify="left", expand=False)
    for col in ("destination", "service", "organisation", "kind", "sent", "received", "flows"):
        table.add_column(col, justify="right" if col in ("sent", "received", "flows") else "left")
    for r in snap.destinations:
        table.add_row(Text(r.destination), Text(r.service), Text(r.organisation), Text(r.kind),
                      _bytes(r.sent_bytes), _bytes(r.received_bytes), str(r.flows))
    parts.append(table)

    if snap.telemetry:
        tele = Table(title="Telemetry seen", title_justify="left", expand=False)
        for col in ("destination", "service", "organisation", "party", "first seen", "sent", "during call"):
            tele.add_column(col, justify="right" if col == "sent" else "left")
        for t in snap.telemetry:
            tele.add_row(Text(t.destination), Text(t.service), Text(t.organisation), Text(t.party),
                         _clock_text(t.first_seen_ns), _bytes(t.sent_bytes), "yes" if t.during_call else "no")
        parts.append(tele)
    else:
        parts.append(Text("telemetry seen: none"))
    return Group(*parts)
