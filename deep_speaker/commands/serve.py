"""serve.py / deep-speaker-serve: the speaker service (deep_speaker.service), its API keys, and enrolment files.

    deep-speaker-serve --database URL [--host 127.0.0.1] [--port 8000] [--workers N] [--keep_audio] ...
    deep-speaker-serve keys create --database URL --scope S [--scope S ...] [--name NAME]
    deep-speaker-serve keys list --database URL
    deep-speaker-serve keys revoke --database URL KEY_ID
    deep-speaker-serve import --database URL ENROLMENT.npz [--replace]
    deep-speaker-serve export --database URL --output ENROLMENT.npz [--speaker ID ...]
    deep-speaker-serve openapi [--output FILE]

--database defaults to $DEEP_SPEAKER_DATABASE, else sqlite:///deep-speaker-data/service.db
(a plain file path is an SQLite file too). Needs the `serve` extra. See docs/service.md.
"""
from __future__ import annotations

import json
import logging
import os
import sys

from deep_speaker.commands.common import (CommandError, add_model_arguments, non_negative_int, parser, positive_float,
                                          positive_int, run, setup_logging)
from deep_speaker.paths import DATA_ROOT

DEFAULT_DATABASE = f"sqlite:///{DATA_ROOT / 'service.db'}"
DATABASE_ENV = "DEEP_SPEAKER_DATABASE"  # keeps a PostgreSQL password off the command line (and out of ps)
SUBCOMMANDS = ("keys", "import", "export", "openapi")
log = logging.getLogger("deep_speaker.service")


def _add_database(p) -> None:
    p.add_argument("--database", default=os.environ.get(DATABASE_ENV) or DEFAULT_DATABASE,
                   help=f"sqlite:///FILE (or a file path) or postgresql://user@host/db (default: ${DATABASE_ENV}, "
                        f"else {DEFAULT_DATABASE})")


def build_parser():
    """The server's own flags (`deep-speaker-serve SUBCOMMAND --help` shows a subcommand's)."""
    return serve_parser()


def serve_parser():
    from deep_speaker.service import settings as limits

    p = parser("The speaker service: verification and identification over HTTP (docs/service.md). Subcommands: "
               "keys create|list|revoke, import, export, openapi (deep-speaker-serve SUBCOMMAND --help).")
    _add_database(p)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on; keep 127.0.0.1 and put a TLS reverse proxy in front (docs/service.md)")
    p.add_argument("--port", type=positive_int, default=8000, help="TCP port to listen on")
    p.add_argument("--workers", type=positive_int, default=None,
                   help="model worker processes, each loading the model once (default: the CPUs, at most 4)")
    p.add_argument("--queue_size", type=non_negative_int, default=limits.DEFAULT_QUEUE_SIZE,
                   help="requests that may wait for a worker; more get 503 with Retry-After")
    p.add_argument("--max_upload_bytes", type=positive_int, default=limits.DEFAULT_MAX_UPLOAD_BYTES,
                   help="largest request body (all its files), 413 above")
    p.add_argument("--max_audio_seconds", type=positive_float, default=limits.DEFAULT_MAX_AUDIO_SECONDS,
                   help="longest recording, 413 above")
    p.add_argument("--max_files", type=positive_int, default=limits.DEFAULT_MAX_FILES,
                   help="most recordings in one enrol request")
    p.add_argument("--requests_per_minute", type=positive_int, default=limits.DEFAULT_REQUESTS_PER_MINUTE,
                   help="calls per API key and minute, 429 above")
    p.add_argument("--max_top_k", type=positive_int, default=limits.DEFAULT_MAX_TOP_K,
                   help="most matches identify returns")
    p.add_argument("--max_streams", type=non_negative_int, default=limits.DEFAULT_MAX_STREAMS,
                   help="live diarization streams (/v1/diarize/stream) at once; more are refused as busy")
    p.add_argument("--max_stream_seconds", type=positive_float, default=limits.DEFAULT_MAX_STREAM_SECONDS,
                   help="the most audio one live stream may send")
    p.add_argument("--keep_audio", action="store_true",
                   help="store each enrolment's recordings in the database (default: embeddings only)")
    p.add_argument("--graceful_timeout", type=positive_float, default=30.0,
                   help="on SIGTERM, seconds to let requests in flight finish before closing")
    add_model_arguments(p)
    p.add_argument("--verbose", action="store_true", help="debug logging")
    return p


def keys_parser():
    p = parser("API keys of the speaker service: create (prints the key alone on its last line; it is shown only "
               "once), list, revoke.")
    p.prog += " keys"
    sub = p.add_subparsers(dest="action", required=True)
    create = sub.add_parser("create", help="make a key", description="Make an API key; prints it alone on the last "
                                                                     "line (shown only once: store it).")
    _add_database(create)
    create.add_argument("--scope", action="append", required=True, choices=("embed", "verify", "identify", "enrol",
                                                                            "admin"),
                        help="what the key may do (repeat for several; admin: everything)")
    create.add_argument("--name", default="", help="a label for keys list (whose key it is)")
    listing = sub.add_parser("list", help="list keys (ids, scopes, names; never the keys)")
    _add_database(listing)
    listing.add_argument("--json", action="store_true", help="one JSON object")
    revoke = sub.add_parser("revoke", help="revoke a key, by its id")
    _add_database(revoke)
    revoke.add_argument("key_id", help="the key's id (keys list), or the key itself")
    for sub_parser in (create, listing, revoke):
        sub_parser.add_argument("--verbose", action="store_true", help="debug logging")
    return p


def import_parser():
    p = parser("Import an enrolment file written by identify.py --enroll (or export) into the service's database, "
               "in one transaction. It must have been made with the service's model.")
    _add_database(p)
    p.add_argument("enrolment", metavar="ENROLMENT.npz")
    p.add_argument("--replace", action="store_true", help="replace speakers already enrolled (default: refuse)")
    add_model_arguments(p, runtime=False)
    p.add_argument("--verbose", action="store_true", help="debug logging")
    return p


def export_parser():
    p = parser("Export enrolled speakers to an enrolment file that identify.py --enrolment reads.")
    _add_database(p)
    p.add_argument("--output", required=True, metavar="ENROLMENT.npz")
    p.add_argument("--speaker", action="append", default=None, help="only this speaker (repeatable; default: all)")
    p.add_argument("--verbose", action="store_true", help="debug logging")
    return p


def openapi_parser():
    p = parser("Print the service's OpenAPI document (generated by FastAPI from the routes), or write it to --output.")
    p.add_argument("--output", default=None, help="a file to write (default: print)")
    p.add_argument("--verbose", action="store_true", help="debug logging")
    return p


def main(argv=None) -> int:
    return run(_main, argv)


def cli() -> None:
    """The console entry point (deep-speaker-serve) and scripts/serve.py."""
    sys.exit(main())


def _main(argv) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv and argv[0] in SUBCOMMANDS else None
    chosen = {"keys": keys_parser, "import": import_parser, "export": export_parser, "openapi": openapi_parser,
              None: serve_parser}[command]()
    if command and command != "keys":
        chosen.prog += f" {command}"
    args = chosen.parse_args(argv[1:] if command else argv)
    setup_logging(args.verbose)
    from deep_speaker.extras import require_extra

    require_extra("serve", "the speaker service (deep-speaker-serve)")
    if command == "openapi":
        return _openapi(args)
    if command is None:
        return _serve(args)
    from deep_speaker.service.store import Store

    store = Store(args.database)
    try:
        return {"keys": _keys, "import": _import, "export": _export}[command](args, store)
    finally:
        store.close()


def _keys(args, store) -> int:
    from deep_speaker.service.keys import create_key, revoke_key

    if args.action == "create":
        made = create_key(store, args.scope, args.name)
        print(f"key {made.record.id} ({' '.join(made.record.scopes)}) created; it is shown only once, below:")
        print(made.key)
    elif args.action == "list":
        keys = store.keys()
        if args.json:
            print(json.dumps([{"id": k.id, "name": k.name, "scopes": list(k.scopes), "created": k.created.isoformat(),
                               "revoked": k.revoked.isoformat() if k.revoked else None} for k in keys]))
        elif not keys:
            print("no keys; make one with: deep-speaker-serve keys create --database URL --scope ...")
        for k in [] if args.json else keys:
            state = f"revoked {k.revoked:%Y-%m-%d %H:%M:%S}" if k.revoked else "active"
            print(f"{k.id}\t{' '.join(k.scopes)}\t{state}\tcreated {k.created:%Y-%m-%d %H:%M:%S}\t{k.name}")
    else:
        print(f"key {revoke_key(store, args.key_id)} revoked")
    return 0


def _import(args, store) -> int:
    from deep_speaker.checkpoints import resolve_model
    from deep_speaker.identification import Enrolment, enrolment_settings, model_identity
    from deep_speaker.service.store import ModelStamp

    enrolment = Enrolment.load(args.enrolment)
    resolved = resolve_model(args.checkpoint, args.checkpoint_dir)
    print(resolved.line(), flush=True)
    stamp = ModelStamp.of(model_identity(resolved.path), enrolment_settings(resolved.config))
    count = store.import_enrolment(enrolment, stamp, replace=args.replace, source=args.enrolment)
    print(f"{count} speakers imported from {args.enrolment}")
    return 0


def _export(args, store) -> int:
    from pathlib import Path

    if Path(args.output).suffix.lower() != ".npz":
        raise CommandError("--output must end in .npz")
    enrolment = store.export_enrolment(args.speaker)
    enrolment.save(args.output)
    print(f"{len(enrolment.speakers)} speakers exported to {args.output}")
    return 0


def _openapi(args) -> int:
    from deep_speaker.service.app import create_app

    document = json.dumps(create_app(None).openapi(), indent=2)
    if args.output:
        from deep_speaker.io_utils import atomic_write_text

        atomic_write_text(args.output, document + "\n")
        print(f"OpenAPI document written to {args.output}")
    else:
        print(document)
    return 0


def _serve(args) -> int:
    import uvicorn

    from deep_speaker.service.app import create_app
    from deep_speaker.service.pool import JobError
    from deep_speaker.service.server import Service
    from deep_speaker.service.settings import ServiceSettings
    from deep_speaker.service.store import shown_url

    try:
        settings = ServiceSettings(max_upload_bytes=args.max_upload_bytes, max_audio_seconds=args.max_audio_seconds,
                                   max_files=args.max_files, requests_per_minute=args.requests_per_minute,
                                   workers=args.workers or 0, queue_size=args.queue_size, max_top_k=args.max_top_k,
                                   keep_audio=args.keep_audio, max_streams=args.max_streams,
                                   max_stream_seconds=args.max_stream_seconds)
    except ValueError as error:
        raise CommandError(str(error)) from None
    try:
        service = Service.start(args.database, settings, args.checkpoint, args.checkpoint_dir, args.runtime)
    except JobError as error:
        raise CommandError(error.message) from None
    log.info("%s", service.model["line"])
    log.info("database %s; %d model worker(s), queue %d, limits: %d bytes, %g s of audio, %d requests/min per key%s",
             shown_url(service.store.url), settings.workers, settings.queue_size, settings.max_upload_bytes,
             settings.max_audio_seconds, settings.requests_per_minute,
             "; recordings kept" if settings.keep_audio else "")
    from deep_speaker.service.live import MAX_MESSAGE_BYTES

    config = uvicorn.Config(create_app(service), host=args.host, port=args.port, log_level="info",
                            ws_max_size=MAX_MESSAGE_BYTES + 4096,  # a live stream's frames, not uvicorn's 16 MiB
                            timeout_graceful_shutdown=int(round(args.graceful_timeout)), lifespan="on")
    server = uvicorn.Server(config)
    server.run()
    return 0 if server.started else 1
