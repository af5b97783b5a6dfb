"""``dealtrail audit ...``: seal, verify and checkpoint the event log; verify an export.

``verify-export`` needs no database: it reads the file with ``libs/chain_verifier.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from libs.application.app import utc_now
from libs.application.integrity import (
    ChainError,
    Signer,
    chain_of,
    checkpoint_at,
    seal,
    verify_store,
)
from libs.chain_verifier import describe, load_public_key, verify_export
from services.cli.arguments import SubCommands, export_file_keys
from services.progress import Progress
from services.runtime.settings import Settings
from services.runtime.stores import open_application


def _position(text: str) -> int:
    value = int(text)
    if not 1 <= value < 2**62:
        raise argparse.ArgumentTypeError("positions start at 1")
    return value


def trusted_keys(settings: Settings, given: list[str]) -> list[bytes]:
    """The keys given on the command line, plus the configured signing key's."""
    keys = [load_public_key(k) for k in given]
    if settings.signer is not None:
        keys.append(settings.signer.public_key)
    return keys


def _seal(args: argparse.Namespace, settings: Settings) -> int:
    application = open_application(settings)
    try:
        chain = chain_of(application.recorder)
        first = chain.first_unsealed()
        if first is None:
            print("every event already has its hash; nothing to seal")
            return 0
        total = application.head_position() - first + 1
        with Progress(total, label="seal", unit="events", enabled=not args.quiet) as bar:
            count = seal(chain, progress=bar.update)
    except ChainError as exc:
        print(f"dealtrail audit seal: {exc}", file=sys.stderr)
        return 1
    finally:
        application.close()
    print(f"sealed {count} event(s) from position {first}")
    return 0


def _verify(args: argparse.Namespace, settings: Settings) -> int:
    try:
        trusted = trusted_keys(settings, args.public_key)
    except ValueError as exc:
        print(f"--public-key: {exc}", file=sys.stderr)
        return 2
    application = open_application(settings)
    try:
        head = application.head_position()
        stop = head if args.to_position is None else min(args.to_position, head)
        total = max(0, stop - args.from_position + 1)
        with Progress(total, label="verify", unit="events", enabled=not args.quiet) as bar:
            report = verify_store(
                chain_of(application.recorder),
                start=args.from_position,
                stop=args.to_position,
                trusted=trusted,
                progress=bar.update,
            )
    finally:
        application.close()
    if args.json:
        print(json.dumps(report.as_json(), indent=2))
    elif report.finding is not None:
        f = report.finding
        print(f"BROKEN at position {f.position} ({f.kind}): {f.message}")
    else:
        print(
            f"chain intact: {report.checked} event(s) from position {report.from_position} "
            f"to {report.to_position}; {report.checkpoints} checkpoint(s) match, "
            f"{report.signed} signed" + (" with a trusted key" if trusted and report.signed else "")
        )
        for note in report.notes:
            print(f"note: {note}")
    return 0 if report.ok else 1


def _verify_export(args: argparse.Namespace, settings: Settings) -> int:
    path: Path = args.file
    trusted = export_file_keys("audit verify-export", path, args.public_key)
    if trusted is None:
        return 2
    with path.open(encoding="utf-8", errors="strict") as lines:
        try:
            report = verify_export(lines, trusted)
        except UnicodeDecodeError:
            print(f"{path}: not UTF-8 text", file=sys.stderr)
            return 1
    if args.json:
        print(json.dumps(report.as_json(), indent=2))
    else:
        for line in describe(report):
            print(line)
    if not report.ok:
        return 1
    if trusted and report.signed_up_to is None:
        print("REFUSED: no checkpoint is signed by the given key", file=sys.stderr)
        return 1
    return 0


def _checkpoint(args: argparse.Namespace, settings: Settings) -> int:
    application = open_application(settings)
    try:
        written = checkpoint_at(chain_of(application.recorder), settings.signer, 2**62, utc_now())
    finally:
        application.close()
    if written is None:
        print("no checkpoint written: the log is empty, unsealed, or its newest event has one")
        return 0
    kind = "signed" if written.signature else "unsigned"
    print(f"{kind} checkpoint at position {written.position}: {written.hash.hex()}")
    return 0


def _keygen(args: argparse.Namespace, settings: Settings) -> int:
    private = Signer.generate()
    signer = Signer.from_text(private)
    print(f"DEALTRAIL_SIGNING_KEY={private}")
    print(f"public key: {signer.public_key_text}")
    return 0


def _public_key(args: argparse.Namespace, settings: Settings) -> int:
    if settings.signer is None:
        print("no DEALTRAIL_SIGNING_KEY is set", file=sys.stderr)
        return 1
    print(settings.signer.public_key_pem if args.pem else settings.signer.public_key_text)
    return 0


def register(commands: SubCommands) -> None:
    """Add ``audit`` and its sub-commands to the ``dealtrail`` parser."""
    parser = commands.add_parser(
        "audit", help="seal, verify and checkpoint the hash-chained event log", description=__doc__
    )
    sub = parser.add_subparsers(dest="audit_command", required=True, metavar="COMMAND")

    seal_cmd = sub.add_parser(
        "seal", help="give every event without a hash its hash (once, for older logs)"
    )
    seal_cmd.add_argument("--quiet", action="store_true", help="no progress display")
    seal_cmd.set_defaults(handler=_seal)

    key_help = "trusted Ed25519 public key (base64, PEM, or a file); may repeat"
    verify = sub.add_parser(
        "verify", help="recompute the chain from the database and name the first break"
    )
    verify.add_argument("--from", dest="from_position", type=_position, default=1, metavar="N")
    verify.add_argument("--to", dest="to_position", type=_position, default=None, metavar="M")
    verify.add_argument("--public-key", action="append", default=[], metavar="KEY", help=key_help)
    verify.add_argument("--json", action="store_true", help="the report as JSON")
    verify.add_argument("--quiet", action="store_true", help="no progress display")
    verify.set_defaults(handler=_verify)

    export = sub.add_parser(
        "verify-export", help="verify an exported JSON Lines file (no database needed)"
    )
    export.add_argument("file", type=Path, metavar="FILE")
    export.add_argument("--public-key", action="append", default=[], metavar="KEY", help=key_help)
    export.add_argument("--json", action="store_true", help="the report as JSON")
    export.set_defaults(handler=_verify_export)

    checkpoint = sub.add_parser("checkpoint", help="write a checkpoint at the newest event now")
    checkpoint.set_defaults(handler=_checkpoint)

    keygen = sub.add_parser("keygen", help="print a new Ed25519 signing key and its public key")
    keygen.set_defaults(handler=_keygen)

    public = sub.add_parser("public-key", help="print the configured signing key's public key")
    public.add_argument("--pem", action="store_true", help="as PEM instead of base64")
    public.set_defaults(handler=_public_key)
