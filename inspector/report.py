"""The short answer per call for the terminal: which service, when, and where data went.

One line per call, e.g.::

    s1 Zoom Meetings call 2025-11-25 14:02:10-14:45:03 UTC (42m53s) from 10.0.0.2, media via 3
    Zoom Meetings servers, streams 2 audio, 1 video; during it, data went to: Zoom Meetings call
    traffic 45.1 MB, Zoom Meetings log.zoom.us 12 KB (first-party telemetry), Google Analytics
    www.googletagmanager.com 3 KB (third-party telemetry: tag-manager)

and one line per capture for the activity outside every call. Sizes are IP-layer bytes *sent by
this machine* inside the window (decimal units, 1 KB = 1000 B), largest first; destinations of the
call's own service (or generic ``webrtc`` media) with kind ``conferencing`` are summed into one
"call traffic" item, every other destination is listed by name with its service's display name;
telemetry is flagged first- or third-party (first-party: the telemetry belongs to the call's
service; a conferencing vendor's own telemetry outside calls, or another vendor's, reads "vendor
telemetry"). Display names are the signatures' ``name`` without a trailing parenthesis
("Microsoft Teams (and Skype ...)" reads "Microsoft Teams"). Destinations this machine sent
nothing to are left out of the line. The full detail is in destinations.csv; these lines only
summarise it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import pandas as pd

from inspector.export import iso_utc

MAX_ITEMS = 8
#: Category the signatures give a conferencing vendor's own telemetry endpoints.
VENDOR_TELEMETRY = "vendor-telemetry"
#: Generic WebRTC media during a call is the call's own (sessions.fold_generic_media).
GENERIC_MEDIA = "webrtc"


def format_bytes(count: int) -> str:
    """512 B, 12 KB, 45.1 MB, 1.25 GB (decimal units)."""
    if count < 1000:
        return f"{count} B"
    if count < 1_000_000:
        return f"{count / 1000:.0f} KB"
    if count < 1_000_000_000:
        return f"{count / 1_000_000:.1f} MB"
    return f"{count / 1_000_000_000:.2f} GB"


def format_duration(seconds: float) -> str:
    """5s, 42m53s, 1h02m03s."""
    total = int(round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def display_names(names: Mapping[str, str] | None = None) -> dict[str, str]:
    """Service id -> short display name; from the signature set when ``names`` is None."""
    if names is None:
        from inspector.errors import SignatureError
        from inspector.signatures import load_signatures

        try:
            names = {sig.id: sig.name for sig in load_signatures().signatures()}
        except SignatureError:
            names = {}
    return {key: re.sub(r"\s*\([^()]*\)$", "", value) or key for key, value in names.items()}


def _name(service: str, names: Mapping[str, str]) -> str:
    return names.get(service, service) if service else ""


def _window_texts(starts: pd.Series, ends: pd.Series) -> list[str]:
    """"2025-11-25 14:02:10-14:45:03 UTC" per call (the end's date too when it differs), to the
    whole second as ``strftime`` gives it. Cut from the tables' own ISO text of the columns
    (``export.iso_utc``, made in numpy), not two ``Timestamp.strftime`` per call (the
    benchmark's 830 calls: ~2 ms against 9 ms)."""
    texts = []
    for start, end in zip(iso_utc(starts).tolist(), iso_utc(ends).tolist()):  # "YYYY-MM-DDTHH:MM:SS.ffffffZ"
        end_text = end[11:19] if start[:10] == end[:10] else f"{end[:10]} {end[11:19]}"
        texts.append(f"{start[:10]} {start[11:19]}-{end_text} UTC")
    return texts


#: sessions.csv columns the call lines read.
SESSION_COLUMNS = (
    "session_id", "service", "duration_s", "client_ip", "relay_servers", "peers", "is_p2p",
    "audio_streams", "video_streams", "screen_streams",
)

#: destinations.csv columns the call lines read.
LINE_COLUMNS = ("session_id", "capture", "destination", "service", "kind", "category", "bytes_sent", "bytes_received")


def _plain_columns(frame: pd.DataFrame, names: tuple[str, ...]) -> dict[str, list]:
    """The columns ``names`` of ``frame`` as plain Python lists (read row by row)."""
    return {name: frame[name].to_numpy(dtype=object).tolist() for name in names}


def _items(
    columns: Mapping[str, list], rows: list[int], call_service: str, names: Mapping[str, str]
) -> list[tuple[int, int, str, str]]:
    """(bytes_sent, bytes_received, label, note) per item, the call's own traffic summed into one.

    ``rows`` are row numbers into ``columns`` (``_plain_columns`` of ``LINE_COLUMNS``). Label and note are kept apart
    (never formatted into each other): destination names come from the capture and are
    attacker-controlled text.
    """
    items: list[tuple[int, int, str, str]] = []
    service_of, kind_of = columns["service"], columns["kind"]
    sent_of, received_of = columns["bytes_sent"], columns["bytes_received"]
    if call_service:
        own = [i for i in rows if service_of[i] in (call_service, GENERIC_MEDIA) and kind_of[i] == "conferencing"]
        if own:
            label = f"{_name(call_service, names)} call traffic"
            note = f" ({len(own)} destinations)" if len(own) > 1 else ""
            items.append((sum(int(sent_of[i]) for i in own), sum(int(received_of[i]) for i in own), label, note))
            mine = set(own)
            rows = [i for i in rows if i not in mine]
    for i in rows:
        service = str(service_of[i])
        destination = columns["destination"][i]
        category = columns["category"][i]
        label = f"{_name(service, names)} {destination}" if service else str(destination)
        note = ""
        if kind_of[i] == "telemetry":
            if service and service == call_service:
                note = " (first-party telemetry)"
            elif category == VENDOR_TELEMETRY:
                note = " (vendor telemetry)"
            else:
                note = f" (third-party telemetry: {category})" if category else " (third-party telemetry)"
        elif not service:
            note = " (unidentified)"
        if int(sent_of[i]) > 0:  # the line says where data *went*; received-only is in the CSV
            items.append((int(sent_of[i]), int(received_of[i]), label, note))
    items.sort(key=lambda item: (-item[0], -item[1], item[2]))
    return items


def _destinations_text(
    columns: Mapping[str, list], rows: list[int], call_service: str, names: Mapping[str, str]
) -> str:
    items = _items(columns, rows, call_service, names)
    if not items:
        return "no data to any destination"
    parts = [f"{label} {format_bytes(sent)}{note}" for sent, _, label, note in items[:MAX_ITEMS]]
    more = len(items) - MAX_ITEMS
    if more > 0:
        parts.append(f"and {more} more (see destinations.csv)")
    return "data went to: " + ", ".join(parts)


def _media_text(session: Mapping[str, object], service_name: str) -> str:
    relays = {server.rsplit(":", 1)[0] for server in str(session["relay_servers"]).split(";") if server}
    peers = {peer for peer in str(session["peers"]).split(";") if peer}
    paths = []
    if session["is_p2p"]:
        paths.append("peer-to-peer")
    if relays:
        plural = "s" if len(relays) > 1 else ""
        paths.append(f"via {len(relays)} {service_name} server{plural}")
    if not paths:
        paths.append(f"via {len(peers)} endpoint{'s' if len(peers) != 1 else ''}")
    text = "media " + " and ".join(paths)
    streams = [
        f"{count} {label}"
        for count, label in (
            (session["audio_streams"], "audio"),
            (session["video_streams"], "video"),
            (session["screen_streams"], "screen"),
        )
        if count
    ]
    if streams:
        text += ", streams " + ", ".join(streams)
    return text


def call_summaries(tables, names: Mapping[str, str] | None = None) -> list[str]:
    """One readable line per call, then one per capture for activity outside calls.

    ``tables`` is a ``sessions.CallTables``; ``names`` maps service ids to display names (loaded
    from the signatures when None).
    """
    shown = display_names(names)
    sessions = tables.sessions
    columns = _plain_columns(tables.destinations, LINE_COLUMNS)
    rows_of_session: dict[str, list[int]] = {}  # destinations rows per session_id, in table order
    for row, session_id in enumerate(columns["session_id"]):
        rows_of_session.setdefault(session_id, []).append(row)
    lines = []
    if len(sessions) == 0:
        lines.append("No calls detected.")
    # Each session as a dict of plain values: ``itertuples`` makes a Timestamp per cell.
    values = _plain_columns(sessions, SESSION_COLUMNS)
    windows = _window_texts(sessions["start"], sessions["end"]) if len(sessions) else []
    for k, row in enumerate(zip(*values.values())):
        session = dict(zip(SESSION_COLUMNS, row))
        service = str(session["service"])
        service_name = _name(service, shown) or "unknown service"
        rows = rows_of_session.get(session["session_id"], [])
        head = (
            f"{session['session_id']} {service_name} call {windows[k]} "
            f"({format_duration(session['duration_s'])}) from {session['client_ip']}"
        )
        during = _destinations_text(columns, rows, service, shown)
        lines.append(f"{head}, {_media_text(session, service_name)}; during it, {during}")
    outside = rows_of_session.get("", [])
    if not outside:
        lines.append("Outside calls: no data to any destination.")
    outside_of_capture: dict[str, list[int]] = {}
    for row in outside:
        outside_of_capture.setdefault(columns["capture"][row], []).append(row)
    for capture in sorted(outside_of_capture):
        rows = outside_of_capture[capture]
        lines.append(f"Outside calls ({capture}): {_destinations_text(columns, rows, '', shown)}")
    return lines


__all__ = ["call_summaries", "display_names", "format_bytes", "format_duration"]
