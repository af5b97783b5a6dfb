"""Checks Dealtrail's tamper-evident event log: the hash chain and its signed checkpoints.

This one module is all an auditor needs to check an export (``dealtrail export events``
or ``GET /v1/audit/export``) with no database: the Python standard library, plus the
``cryptography`` package for Ed25519 signatures. Run it as a script::

    python chain_verifier.py events.jsonl --public-key KEY

The service uses the same code to check its own database (``dealtrail audit verify``).

The chain (version 1)
---------------------
Every stored event has ``hash = SHA-256(prev_hash || canonical bytes)``, where
``prev_hash`` is the hash of the previous *stored* event (32 zero bytes for the first)
and the canonical bytes are, big-endian, with no separators:

    position         8 bytes, signed integer
    aggregate id    16 bytes, the UUID's bytes (RFC 4122 order)
    version          8 bytes, signed integer
    topic length     4 bytes, unsigned integer, then the topic in UTF-8
    state length     4 bytes, unsigned integer, then the stored state bytes

Positions ascend but may skip numbers (PostgreSQL spends a position on an insert that
rolls back), so each event also records ``prev_position``, the position of the event
its hash links to. That number is not hashed; it only lets a checker tell a harmless
gap (``prev_position`` is the previous stored event) from a deletion (it names a
position that is no longer there).

Checkpoints
-----------
A checkpoint states ``(position, hash, created_at)``. Signed ones carry an Ed25519
signature, by ``public_key``, over these UTF-8 bytes (``\\n`` is a newline, the hash in
lowercase hex, ``created_at`` exactly as written in the checkpoint)::

    dealtrail checkpoint v1\\nposition {position}\\nhash {hash}\\ncreated_at {created_at}\\n

An export line is either an event (``position``, ``aggregate_id``, ``version``,
``topic``, ``state`` in base64, ``prev_position``, ``prev_hash`` and ``hash`` in hex,
and the readable fields ``aggregate_type``, ``type``, ``actor``, ``occurred_at``,
``recorded_at``, ``payload``, and ``class_version`` when the state names one: the shape
the event was stored in) or ``{"checkpoint": {...}}`` right after the event at its
position. The readable fields are checked against the hashed state, so what an auditor
reads is what was hashed.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import struct
import sys
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from hashlib import sha256
from pathlib import Path
from typing import Any

GENESIS = bytes(32)
CHANGED, MISSING, REORDERED, UNSEALED, BAD_SIGNATURE, MALFORMED = (
    "changed",
    "missing",
    "reordered",
    "unsealed",
    "bad_signature",
    "malformed",
)

_HEAD = struct.Struct(">q16sqI")  # position, aggregate id, version, topic length
_LENGTH = struct.Struct(">I")

# One stored event as the chain sees it:
# (position, aggregate id bytes, version, topic UTF-8, state, prev_position, hash or None)
Link = tuple[int, bytes, int, bytes, bytes, int, bytes | None]


def event_hash(
    prev_hash: bytes, position: int, aggregate_id: bytes, version: int, topic: bytes, state: bytes
) -> bytes:
    """The hash of one event given the hash of the event before it."""
    return sha256(
        prev_hash
        + _HEAD.pack(position, aggregate_id, version, len(topic))
        + topic
        + _LENGTH.pack(len(state))
        + state
    ).digest()


def checkpoint_message(position: int, hash_: bytes, created_at: str) -> bytes:
    """The bytes a checkpoint's signature covers."""
    return (
        f"dealtrail checkpoint v1\nposition {position}\nhash {hash_.hex()}\n"
        f"created_at {created_at}\n"
    ).encode()


@dataclass(frozen=True)
class Checkpoint:
    """A statement that the event at ``position`` had ``hash`` at ``created_at``."""

    position: int
    hash: bytes
    created_at: str
    public_key: bytes | None = None
    signature: bytes | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "position": self.position,
            "hash": self.hash.hex(),
            "created_at": self.created_at,
            "public_key": _b64(self.public_key),
            "signature": _b64(self.signature),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Checkpoint:
        return cls(
            position=_int(data, "position"),
            hash=_hex(data, "hash"),
            created_at=_str(data, "created_at"),
            public_key=_unb64(data.get("public_key"), "public_key"),
            signature=_unb64(data.get("signature"), "signature"),
        )


@dataclass(frozen=True)
class Finding:
    """The first thing wrong: where, what kind of damage, and a sentence about it."""

    position: int
    kind: str
    message: str

    def as_json(self) -> dict[str, Any]:
        return {"position": self.position, "kind": self.kind, "message": self.message}


def signature_problem(checkpoint: Checkpoint, trusted: Sequence[bytes]) -> str | None:
    """Why the checkpoint's signature does not hold (None when it does or is absent).

    With ``trusted`` keys a signature must be by one of them; without, it must at least
    verify with the key it names (which proves nothing about who signed it).
    """
    if checkpoint.signature is None:
        return None
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    key = checkpoint.public_key
    if key is None:
        return "has a signature but names no public key"
    if trusted and key not in trusted:
        return f"is signed by key {key.hex()[:16]}..., not by a key you trust"
    try:
        public = Ed25519PublicKey.from_public_bytes(key)
        public.verify(checkpoint.signature, checkpoint_message(*_signed_part(checkpoint)))
    except (InvalidSignature, ValueError):
        return "has a signature that does not verify"
    return None


def _signed_part(checkpoint: Checkpoint) -> tuple[int, bytes, str]:
    return checkpoint.position, checkpoint.hash, checkpoint.created_at


class ChainWalk:
    """Follows links in position order from a trusted start; stops at the first fault."""

    def __init__(
        self,
        position: int = 0,
        hash_: bytes = GENESIS,
        checkpoints: Iterable[Checkpoint] = (),
    ) -> None:
        self.position = position  # the last event verified (0: none yet)
        self.hash = hash_
        self.count = 0
        self.finding: Finding | None = None
        self.pending = sorted(checkpoints, key=lambda c: c.position, reverse=True)
        self.matched: list[Checkpoint] = []

    def feed(self, links: Iterable[Link]) -> bool:
        """Check ``links`` (the next events, in order); False once something is wrong."""
        if self.finding is not None:
            return False
        position, prev_hash, count = self.position, self.hash, 0
        pending = self.pending
        next_checkpoint = pending[-1].position if pending else -1
        head, length = _HEAD.pack, _LENGTH.pack
        for link in links:
            pos, aggregate_id, version, topic, state, prev_position, stored = link
            expected = sha256(
                prev_hash + head(pos, aggregate_id, version, len(topic)) + topic
                + length(len(state)) + state
            ).digest()  # fmt: skip
            if expected != stored or prev_position != position or pos <= position:
                self.finding = _diagnose(position, link, expected)
                break
            if 0 <= next_checkpoint <= pos:
                self.position, self.hash = position, prev_hash
                if not self._checkpoint(pos, stored):
                    break
                next_checkpoint = pending[-1].position if pending else -1
            position, prev_hash = pos, stored
            count += 1
        self.position, self.hash = position, prev_hash
        self.count += count
        return self.finding is None

    def _checkpoint(self, position: int, stored: bytes) -> bool:
        checkpoint = self.pending.pop()
        if checkpoint.position < position:
            self.finding = Finding(
                checkpoint.position,
                MISSING,
                f"the event at position {checkpoint.position} is gone: a checkpoint of "
                f"{checkpoint.created_at} recorded it",
            )
            return False
        if checkpoint.hash != stored:
            self.finding = Finding(
                position,
                CHANGED,
                f"the history up to position {position} differs from the checkpoint of "
                f"{checkpoint.created_at}: it was rewritten after that checkpoint",
            )
            return False
        self.matched.append(checkpoint)
        return True

    def finish(self, last_position: int | None = None) -> bool:
        """After the last link: any checkpoint at or below ``last_position`` not reached
        names an event removed from the end."""
        if self.finding is not None:
            return False
        for checkpoint in reversed(self.pending):
            if last_position is None or checkpoint.position <= last_position:
                self.finding = Finding(
                    checkpoint.position,
                    MISSING,
                    f"the log ends at position {self.position}, but a checkpoint of "
                    f"{checkpoint.created_at} recorded an event at {checkpoint.position}: "
                    "events were removed from the end",
                )
                return False
        return True


def _diagnose(position: int, link: Link, expected: bytes) -> Finding:
    """Name the fault at ``link``, the first event after ``position`` that fails."""
    pos, _, _, _, _, prev_position, stored = link
    if stored is None:
        return Finding(pos, UNSEALED, f"position {pos} has no hash")
    if pos <= position:
        return Finding(pos, REORDERED, f"position {pos} comes after position {position}")
    if expected == stored:
        return Finding(
            pos,
            CHANGED,
            f"position {pos} names {prev_position} as the event before it, but its hash "
            f"links to {position}: its link was edited",
        )
    if prev_position == position:
        return Finding(pos, CHANGED, f"the event at position {pos} does not match its hash")
    if position < prev_position < pos:
        return Finding(
            prev_position,
            MISSING,
            f"the event at position {prev_position} is gone (position {pos} links to it)",
        )
    return Finding(
        pos,
        REORDERED,
        f"the event at position {pos} was stored after position {prev_position}, "
        f"not after {position}: events were moved",
    )


# --- export files -------------------------------------------------------------------------


class Malformed(ValueError):
    """A line of the file is not an event or a checkpoint as this format defines them."""


@dataclass
class ExportReport:
    """What checking an export found."""

    events: int = 0
    first_position: int | None = None
    last_position: int | None = None
    start_hash: bytes = GENESIS
    start_position: int = 0
    last_hash: bytes = GENESIS
    checkpoints: list[Checkpoint] = field(default_factory=list)
    signed: int = 0
    finding: Finding | None = None

    @property
    def ok(self) -> bool:
        return self.finding is None

    @property
    def signed_up_to(self) -> int | None:
        """The last position covered by a verified signature."""
        signed = [c.position for c in self.checkpoints if c.signature is not None]
        return max(signed) if signed else None

    def as_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "events": self.events,
            "first_position": self.first_position,
            "last_position": self.last_position,
            "starts_after": {"position": self.start_position, "hash": self.start_hash.hex()},
            "checkpoints": len(self.checkpoints),
            "signed_checkpoints": self.signed,
            "signed_up_to": self.signed_up_to,
            "finding": self.finding.as_json() if self.finding else None,
        }


def parse_event(data: dict[str, Any]) -> tuple[Link, bytes]:
    """An export line's event as a chain link, and its ``prev_hash``."""
    try:
        aggregate_id = uuid.UUID(_str(data, "aggregate_id")).bytes
    except ValueError:
        raise Malformed("aggregate_id is not a UUID") from None
    state = _unb64(data.get("state"), "state")
    if state is None:
        raise Malformed("state is missing")
    link: Link = (
        _int(data, "position"),
        aggregate_id,
        _int(data, "version"),
        _str(data, "topic").encode(),
        state,
        _int(data, "prev_position"),
        _hex(data, "hash"),
    )
    check_readable_fields(data, link)
    return link, _hex(data, "prev_hash")


def check_readable_fields(data: dict[str, Any], link: Link) -> None:
    """The line's readable fields must say what the hashed topic and state say."""
    topic = link[3].decode()
    qualname = topic.split(":", 1)[-1]
    owner, _, event_type = qualname.rpartition(".")
    try:
        state = json.loads(link[4])
    except ValueError:
        raise Malformed("state is not JSON") from None
    if not isinstance(state, dict):
        raise Malformed("state is not a JSON object")
    state = {k: _plain(v) for k, v in state.items()}
    expected = {
        "aggregate_type": owner.rpartition(".")[-1] or "Unknown",
        "type": event_type,
        "actor": state.pop("actor", None),
        "occurred_at": state.pop("occurred_at", None),
        "recorded_at": state.pop("timestamp", None),
    }
    state.pop("originator_topic", None)
    expected["class_version"] = state.pop("class_version", None)
    expected["payload"] = state
    for name, value in expected.items():
        if data.get(name) != value:
            raise Malformed(f"{name} differs from the hashed state")


def _plain(value: Any) -> Any:
    """The stored JSON's typed values as the export writes them."""
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        if set(value) == {"_type_", "_data_"}:
            data = _plain(value["_data_"])
            return str(uuid.UUID(data)) if value["_type_"] == "uuid_hex" else data
        return {k: _plain(v) for k, v in value.items()}
    return value


def read_export(lines: Iterable[str]) -> Iterator[tuple[int, Link, bytes] | Checkpoint]:
    """Each line as (line number, link, prev_hash) or a checkpoint."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
            if not isinstance(data, dict):
                raise Malformed("not a JSON object")
            if "checkpoint" in data:
                inner = data["checkpoint"]
                if not isinstance(inner, dict):
                    raise Malformed("checkpoint is not an object")
                yield Checkpoint.from_json(inner)
            else:
                link, prev_hash = parse_event(data)
                yield number, link, prev_hash
        except (ValueError, TypeError) as exc:
            raise Malformed(f"line {number}: {exc}") from None


def verify_export(
    lines: Iterable[str], trusted: Sequence[bytes] = (), batch: int = 1000
) -> ExportReport:
    """Check a whole export: chain, checkpoints and signatures; stop at the first fault.

    The first event's ``prev_hash`` is taken as given (an export may start anywhere);
    a checkpoint later in the file vouches for everything before it.
    """
    report = ExportReport()
    walk: ChainWalk | None = None
    links: list[Link] = []
    last_line_position = 0

    def flush() -> bool:
        assert walk is not None
        ok = walk.feed(links)
        links.clear()
        return ok

    try:
        for item in read_export(lines):
            if isinstance(item, Checkpoint):
                if walk is None or not flush():
                    if walk is None:
                        report.finding = Finding(
                            item.position, MALFORMED, "a checkpoint comes before any event"
                        )
                    break
                problem = _check_checkpoint(item, walk, trusted)
                if problem is not None:
                    report.finding = problem
                    break
                report.checkpoints.append(item)
                report.signed += item.signature is not None
                continue
            _, link, prev_hash = item
            if walk is None:
                report.start_position, report.start_hash = link[5], prev_hash
                report.first_position = link[0]
                walk = ChainWalk(link[5], prev_hash)
            elif prev_hash != (links[-1][6] if links else walk.hash):
                flush()
                if walk.finding is None:
                    report.finding = Finding(
                        link[0], CHANGED, f"prev_hash of position {link[0]} is not the hash before"
                    )
                break
            last_line_position = link[0]
            links.append(link)
            if len(links) >= batch and not flush():
                break
        if walk is not None and report.finding is None:
            flush()
    except Malformed as exc:
        report.finding = Finding(last_line_position, MALFORMED, str(exc))
    if walk is not None:
        report.events = walk.count
        report.last_position = walk.position if walk.count else None
        report.last_hash = walk.hash
        report.finding = report.finding or walk.finding
    return report


def _check_checkpoint(
    checkpoint: Checkpoint, walk: ChainWalk, trusted: Sequence[bytes]
) -> Finding | None:
    if checkpoint.position != walk.position:
        return Finding(
            checkpoint.position,
            MALFORMED,
            f"the checkpoint for position {checkpoint.position} follows position {walk.position}",
        )
    if checkpoint.hash != walk.hash:
        return Finding(
            walk.position,
            CHANGED,
            f"the history up to position {walk.position} differs from the checkpoint of "
            f"{checkpoint.created_at}",
        )
    problem = signature_problem(checkpoint, trusted)
    if problem is not None:
        return Finding(
            checkpoint.position, BAD_SIGNATURE, f"the checkpoint at {checkpoint.position} {problem}"
        )
    return None


# --- keys and small parsers ----------------------------------------------------------------


def load_public_key(text: str) -> bytes:
    """A public key given as base64 of its 32 bytes, as PEM, or as a file holding either."""
    text = text.strip()
    path = Path(text)
    if len(text) < 1024 and "\n" not in text and path.is_file():
        text = path.read_text(encoding="utf-8").strip()
    if text.startswith("-----BEGIN"):
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        key = serialization.load_pem_public_key(text.encode())
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError("the PEM public key is not an Ed25519 key")
        return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    try:
        raw = base64.b64decode(text, validate=True)
    except binascii.Error:
        raise ValueError("a public key is base64 of 32 bytes, PEM, or a file with either") from None
    if len(raw) != 32:
        raise ValueError("an Ed25519 public key is 32 bytes (44 characters of base64)")
    return raw


def _b64(value: bytes | None) -> str | None:
    return base64.b64encode(value).decode() if value is not None else None


def _unb64(value: Any, name: str) -> bytes | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise Malformed(f"{name} is not base64 text")
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error:
        raise Malformed(f"{name} is not base64") from None


def _int(data: dict[str, Any], name: str) -> int:
    value = data.get(name)
    if type(value) is not int:
        raise Malformed(f"{name} is not an integer")
    return value


def _str(data: dict[str, Any], name: str) -> str:
    value = data.get(name)
    if not isinstance(value, str):
        raise Malformed(f"{name} is not text")
    return value


def _hex(data: dict[str, Any], name: str) -> bytes:
    try:
        value = bytes.fromhex(_str(data, name))
    except ValueError:
        raise Malformed(f"{name} is not hex") from None
    if len(value) != 32:
        raise Malformed(f"{name} is not 32 bytes")
    return value


def describe(report: ExportReport) -> list[str]:
    """The report as sentences."""
    if report.finding is not None:
        f = report.finding
        return [f"BROKEN at position {f.position} ({f.kind}): {f.message}"]
    if not report.events:
        return ["the file holds no events"]
    lines = [
        f"chain intact: {report.events} event(s), positions {report.first_position} to "
        f"{report.last_position}",
        f"{len(report.checkpoints)} checkpoint(s), {report.signed} signed and verified",
    ]
    if report.start_position:
        lines.append(
            f"starts after position {report.start_position} (hash {report.start_hash.hex()}), "
            "taken as given"
        )
    covered = report.signed_up_to
    if covered is None:
        lines.append(
            "no signed checkpoint: the file is consistent, but nothing proves who wrote it"
        )
    elif report.last_position is not None and covered < report.last_position:
        lines.append(
            f"signed up to position {covered}; positions after it are chained but not signed"
        )
    else:
        lines.append("every event is covered by a signed checkpoint")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Verify a Dealtrail event export.")
    parser.add_argument("file", type=Path)
    parser.add_argument(
        "--public-key",
        action="append",
        default=[],
        metavar="KEY",
        help="trusted Ed25519 public key (base64, PEM or a file); may repeat",
    )
    args = parser.parse_args(argv)
    try:
        trusted = [load_public_key(k) for k in args.public_key]
    except ValueError as exc:
        print(f"--public-key: {exc}", file=sys.stderr)
        return 2
    with args.file.open(encoding="utf-8") as lines:
        report = verify_export(lines, trusted)
    for line in describe(report):
        print(line)
    if not report.ok:
        return 1
    if trusted and report.signed_up_to is None:
        print("REFUSED: no checkpoint signed by the given key", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
