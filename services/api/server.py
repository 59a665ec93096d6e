"""Serving the API with waitress: `fedbus api` (blocking) and ApiServer (a thread, for tests and embedding)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from types import FrameType
from typing import Any

from opentelemetry.instrumentation.flask import FlaskInstrumentor
from waitress import wasyncore
from waitress.server import create_server

from contracts.errors import ConfigError
from ops.telemetry import configure_telemetry, exporting, shutdown_telemetry
from persistence.telemetry import instrument_database
from services.api.app import close_app, create_app, end_streams
from services.api.settings import OUTBUF_HIGH_WATERMARK, ApiSettings

log = logging.getLogger(__name__)
LOOP_POLL_S = 0.2
BODY_HEADROOM = 2  # waitress refuses bodies past this many times max_body_bytes; below it Flask's JSON 413


def waitress_options(settings: ApiSettings) -> dict[str, Any]:
    """How waitress serves the app: the limits the API's hardening relies on, spelled out."""
    return {
        "host": settings.host,
        "port": settings.port,
        "threads": settings.threads,
        "ident": "fedbus",
        # Read ahead while a request runs, so a stream sees its client go away (EOF) within one poll
        # instead of at its next failed write.
        "channel_request_lookahead": 1,
        "outbuf_high_watermark": OUTBUF_HIGH_WATERMARK,  # streams write at most half of this (settings)
        "max_request_body_size": BODY_HEADROOM * settings.max_body_bytes,
        "log_socket_errors": False,  # a client resetting its connection is not the server's error
    }


def check_exposure(settings: ApiSettings) -> None:
    """Without tokens the API is open: refuse to bind anything but loopback."""
    if not settings.auth_enabled and not settings.loopback_only:
        raise ConfigError(
            "host", f"refusing to serve on {settings.host} without FEDBUS_API_TOKENS; set tokens or bind 127.0.0.1"
        )


class ApiServer:
    """The app behind a waitress server on its own thread; `port` is the bound one (0 picks a free port)."""

    def __init__(self, settings: ApiSettings, **app_options: Any) -> None:
        check_exposure(settings)
        self.app = create_app(settings, **app_options)
        self._server: Any = create_server(self.app, **waitress_options(settings))
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    @property
    def port(self) -> int:
        return int(self._server.effective_port)

    @property
    def url(self) -> str:
        return f"http://{self._server.effective_host}:{self.port}"

    def start(self) -> ApiServer:
        self._thread = threading.Thread(target=self._serve, name="fedbus-api-http", daemon=True)
        self._thread.start()
        return self

    def _serve(self) -> None:
        # waitress's own run() never returns while connections are open; this loop checks a flag between polls
        # and closes the sockets on its own thread (closing them from another one races with the poll).
        sockets = self._server._map
        while not self._stopping.is_set():
            wasyncore.loop(timeout=LOOP_POLL_S, use_poll=True, map=sockets, count=1)
        wasyncore.close_all(sockets)

    def run(self) -> None:
        """Serve on the calling thread until SIGINT/SIGTERM."""
        self._server.run()

    def close(self) -> None:
        """End open event streams, stop the socket loop, let the workers finish, then release the database."""
        end_streams(self.app)
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5)  # the loop sees the flag within LOOP_POLL_S
        self._server.task_dispatcher.shutdown(timeout=5)
        close_app(self.app)


def api_command(args: argparse.Namespace) -> int:
    """`fedbus api`: settings from the environment, --database-url/--host/--port from flags."""
    settings = ApiSettings.from_env(database_url=args.database_url, host=args.host, port=args.port)
    configure_telemetry("fedbus-api")
    if exporting():
        instrument_database()
    server = ApiServer(settings)
    FlaskInstrumentor().instrument_app(server.app)  # type: ignore[no-untyped-call]

    def stop(signum: int, frame: FrameType | None) -> None:
        sys.exit(0)  # waitress's loop ends on SystemExit and shuts its task threads down

    signal.signal(signal.SIGTERM, stop)
    print(f"fedbus api: serving on {server.url} (database {settings.database_url.rsplit('@', 1)[-1]})", file=sys.stderr)
    try:
        server.run()
    finally:
        close_app(server.app)
        shutdown_telemetry()
    return 0


__all__ = ["ApiServer", "api_command", "check_exposure", "waitress_options"]
