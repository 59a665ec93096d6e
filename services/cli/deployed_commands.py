"""`fedbus coordinator | aggregator | client | up | db`: settings from the environment, read once here."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
from collections.abc import Callable

from ops.lifecycle import run_until_signalled
from ops.settings import Settings, Share
from services.cli.options import config_from


def coordinator(args: argparse.Namespace) -> int:
    from services.roots.coordinator import serve

    settings = Settings.from_env()
    if args.config is None and settings.run_config is not None:
        args.config = settings.run_config  # the flags (compose's --clients) still override the file's options
    has_options = any(getattr(args, k, None) is not None for k in ("config", "clients", "rounds", "task"))
    run_config = config_from(args) if has_options else None
    run_until_signalled(lambda stop: serve(settings, stop, run_config))
    return 0


def aggregator(args: argparse.Namespace) -> int:
    from services.roots.aggregator import serve

    settings = Settings.from_env()
    run_until_signalled(lambda stop: serve(settings, stop))
    return 0


def client(args: argparse.Namespace) -> int:
    from services.roots.client import serve

    settings = Settings.from_env()
    if args.data is not None:
        settings = dataclasses.replace(settings, client_data=args.data.expanduser(), share=None)
    if args.share is not None:
        settings = dataclasses.replace(settings, share=Share.parse(args.share, "--share"), client_data=None)
    if args.share_claims is not None:
        settings = dataclasses.replace(settings, share_claims=args.share_claims.expanduser())
    run_until_signalled(lambda stop: serve(settings, stop))
    return 0


def up(args: argparse.Namespace) -> int:
    from services.cli.up_command import up_command

    return up_command(args)


def api(args: argparse.Namespace) -> int:
    from services.api.server import api_command

    return api_command(args)


def db(args: argparse.Namespace) -> int:
    from persistence.migrations import upgrade
    from persistence.sql_admin import ensure_database

    settings = Settings.from_env()
    if args.db_command == "upgrade":
        asyncio.run(ensure_database(settings.database_url))
        asyncio.run(upgrade(settings.database_url))
        print(f"database at {settings.database_url.rsplit('@', 1)[-1]} is up to date")
    else:
        removed = asyncio.run(_prune(settings.database_url, args.keep_rounds))
        print(f"pruned {removed} blobs")
    return 0


async def _prune(url: str, keep_rounds: int) -> int:
    from persistence.sql_event_log import SqlEventLog

    event_log = await SqlEventLog.connect(url, create=False)
    try:
        return await event_log.prune(keep_rounds)
    finally:
        await event_log.close()


def data(args: argparse.Namespace) -> int:
    from workers.learning.datasets import fetch_dataset

    for name in args.datasets:
        downloaded = fetch_dataset(name, args.into)
        print(f"{name}: {'downloaded into' if downloaded else 'found in'} {args.into}")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "coordinator": coordinator,
    "aggregator": aggregator,
    "client": client,
    "up": up,
    "api": api,
    "db": db,
    "data": data,
}
