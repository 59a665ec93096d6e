"""A storm of generated malformed and random REST requests against the real API over PostgreSQL: odd methods,
paths with NUL, control characters, bad percent-encodings and very long ids, random query strings, malformed,
deeply nested, non-standard and oversized JSON, wrong content types and bad Authorization headers.

Sent raw over sockets (no client library tidies them up), from a seeded generator, so every run sends the same
requests. No answer is a 500, nothing is logged with a traceback, every refusal the app makes is a JSON error,
and /healthz answers afterwards. `pytest -s` prints how many requests of each kind got which status;
tests/hardening/artifacts/inputs_tried.json keeps the counts.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import socket
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pytest

from contracts.events import EVENT_TYPES
from services.api.params import MAX_JSON_DEPTH
from services.api.server import ApiServer
from services.api.settings import ApiSettings
from tests.api.conftest import ADMIN_TOKEN, TOKENS, VIEWER_TOKEN, postgres_database, run_async, serving
from tests.api.world import seed
from tests.hardening.tally import Tally

pytestmark = pytest.mark.integration

SEED = 20_261_203
REQUESTS = 3_200
WORKERS = 4
TIMEOUT_S = 10.0
MAX_BODY = ApiSettings().max_body_bytes
TALLY = Tally("api_storm")
Rng = random.Random


@dataclass(frozen=True, slots=True)
class Probe:
    """One raw HTTP/1.1 request; `kind` names its body and framing (the tally's rows)."""

    kind: str
    method: bytes
    target: bytes
    headers: tuple[tuple[bytes, bytes], ...] = ()
    body: bytes = b""


@dataclass(frozen=True, slots=True)
class Answer:
    status: int  # 0: no status line within TIMEOUT_S
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    @property
    def from_app(self) -> bool:
        """Flask answered (JSON); waitress's own refusals of unparseable requests are text/plain."""
        return self.headers.get("content-type", "").startswith("application/json")


# -- ids, queries and paths ------------------------------------------------------------------------------


def _percent(raw: bytes) -> bytes:
    return b"".join(b"%%%02X" % byte for byte in raw)


ODD_IDS: tuple[Callable[[Rng], bytes], ...] = (
    lambda rng: rng.choice([b"run-a", b"c-alpha", b"nope", b"run-a.1:x"]),
    lambda rng: b"a%00b",
    lambda rng: b"id" + _percent(bytes([rng.randrange(0, 32)])),
    lambda rng: _percent(rng.randbytes(rng.randrange(1, 12))),
    lambda rng: _percent(rng.choice(["é", "日本", "🙂", "\u202e", "\ufeff", "\x7f"]).encode()),
    lambda rng: b"%ED%A0%80",  # a UTF-16 surrogate, UTF-8 encoded: not valid UTF-8
    lambda rng: b"x" * rng.choice([101, 201, 2_000, 20_000]),
    lambda rng: rng.choice([b"%zz", b"%", b"%0", b"..", b"%2e%2e%2f", b"%2F", b"+", b"%20", b";", b"a?b"]),
    lambda rng: bytes(rng.randrange(0x80, 0x100) for _ in range(3)),  # raw, not percent-encoded
)

PATHS = (
    b"/api/v1/runs",
    b"/api/v1/runs/{id}",
    b"/api/v1/runs/{id}/rounds",
    b"/api/v1/runs/{id}/rounds/{round}",
    b"/api/v1/runs/{id}/privacy",
    b"/api/v1/runs/{id}/stop",
    b"/api/v1/clients",
    b"/api/v1/clients/{id}",
    b"/api/v1/clients/{id}/evict",
    b"/api/v1/events",
    b"/api/v1/stream",
    b"/healthz",
    b"/readyz",
    b"/metrics",
    b"/openapi.json",
    b"/",
    b"/static/{id}",
    b"/api/v1/{id}",
    b"//api//v1//runs/",
)
QUERY_KEYS = (b"after", b"limit", b"run_id", b"round", b"type", b"token", b"junk", b"", b"%00")


def _query_value(rng: Rng) -> bytes:
    options: tuple[Callable[[], bytes], ...] = (
        lambda: str(rng.randrange(-5, 600)).encode(),
        lambda: rng.choice([b"9" * 30, b"1.5", b"abc", b"", b"%00", b"+7", b"0x10", b"1e3", b"%FF%FE"]),
        lambda: rng.choice(sorted(EVENT_TYPES)).encode(),
        lambda: rng.choice(ODD_IDS)(rng),
        lambda: rng.choice([VIEWER_TOKEN, ADMIN_TOKEN, "wrong"]).encode(),
    )
    return rng.choice(options)()


def _query(rng: Rng) -> bytes:
    shape = rng.random()
    if shape < 0.3:
        return b""
    if shape < 0.35:
        return b"?" + b"&".join(b"k%d=v" % i for i in range(rng.choice([800, 3_000])))
    if shape < 0.4:
        return rng.choice([b"?&&==&", b"?=", b"?a=%", b"?" + b"%" * 50, b"??a=b"])
    pairs = [rng.choice(QUERY_KEYS) + b"=" + _query_value(rng) for _ in range(rng.randrange(1, 5))]
    return b"?" + b"&".join(pairs)


def _target(rng: Rng) -> bytes:
    path = rng.choice(PATHS).replace(b"{id}", rng.choice(ODD_IDS)(rng)).replace(b"{round}", _query_value(rng))
    return path + _query(rng)


# -- headers and bodies ----------------------------------------------------------------------------------


AUTHORIZATIONS = (
    None,
    f"Bearer {VIEWER_TOKEN}".encode(),
    f"Bearer {ADMIN_TOKEN}".encode(),
    f"bearer {ADMIN_TOKEN}".encode(),
    b"Bearer",
    b"Bearer ",
    b"Bearer wrong-token",
    f"Basic {ADMIN_TOKEN}".encode(),
    b"Bearer \xe9\xff\xfe",
    b"Bearer " + b"t" * 8_000,
    f"Bearer {ADMIN_TOKEN}, Bearer {VIEWER_TOKEN}".encode(),
)
CONTENT_TYPES = (
    None,
    b"application/json",
    b"application/json; charset=utf-16",
    b"text/plain",
    b"application/x-www-form-urlencoded",
    b"multipart/form-data; boundary=xyz",
    b"multipart/form-data",
    b"\xff/\xfe",
)
CONFIG_KEYS = ("rounds", "clients", "partition", "compression", "seed", "task", "run_id", "round",
               "privacy", "target_accuracy", "train_limit", "no_such", "reason")  # fmt: skip
CONFIG_VALUES: tuple[object, ...] = (0, -1, 1, 3, 2**70, 1.5, 1e300, -0.0, True, None, "", "iid", "shards:0",
                                     "shards:", "dirichlet:-1", "dirichlet:abc", "dirichlet:0.5", "int8", "zip",
                                     "a\x00b", "\ud800", "x" * 300, [], [1, [2]], {}, {"quorum": 2},
                                     {"epsilon": 0}, {"lr": -1, "aggregator": 5})  # fmt: skip


def _nested(depth: int) -> bytes:
    return b'{"round": ' * depth + b"1" + b"}" * depth


BODIES: tuple[tuple[str, Callable[[Rng], bytes]], ...] = (
    ("none", lambda rng: b""),
    (
        "config",
        lambda rng: json.dumps(
            {rng.choice(CONFIG_KEYS): rng.choice(CONFIG_VALUES) for _ in range(rng.randrange(1, 5))}
        ).encode(),
    ),
    ("not_json", lambda rng: rng.choice([b"{", b"{nope", b"[1,", b'{"a":1}x', b"\xff\xfe{}", b"\x00", b"null"])),
    ("scalar_json", lambda rng: rng.choice([b"1", b'"x"', b"[1, 2]", b"true", b" \n "])),
    ("deep_json", lambda rng: rng.choice([b"[" * 100_000, b"{" * 50_000, _nested(MAX_JSON_DEPTH + 1), _nested(900)])),
    ("constants", lambda rng: rng.choice([b'{"rounds": NaN}', b'{"round": {"lr": Infinity}}', b"-Infinity"])),
    ("big_int", lambda rng: b'{"rounds": ' + b"9" * rng.choice([400, 5_000]) + b"}"),
    ("escapes", lambda rng: rng.choice([b'{"reason": "\\u0000"}', b'{"\\u0000": 1}', b'{"run_id": "\\ud800"}'])),
    ("random_bytes", lambda rng: rng.randbytes(rng.randrange(1, 300))),
    ("form", lambda rng: b"a=1&b=%00&reason=x"),
    ("oversized", lambda rng: b'{"reason": "' + b"x" * (MAX_BODY + 1) + b'"}'),
)
BODY_WEIGHTS = (30, 30, 8, 4, 2, 3, 2, 4, 8, 4, 0.5)


def _headers(rng: Rng, body: bytes) -> tuple[str, list[tuple[bytes, bytes]]]:
    headers: list[tuple[bytes, bytes]] = []
    authorization = rng.choice(AUTHORIZATIONS)
    if authorization is not None:
        headers.append((b"Authorization", authorization))
    content_type = rng.choice(CONTENT_TYPES)
    if content_type is not None:
        headers.append((b"Content-Type", content_type))
    if rng.random() < 0.1:
        headers.append((b"Last-Event-ID", rng.choice([b"7", b"-1", b"yesterday", b"9" * 40, b"\xff"])))
    framing = rng.random()
    if framing < 0.03:
        return "declared_huge", [*headers, (b"Content-Length", str(4 * MAX_BODY).encode())]  # sent: nothing
    if framing < 0.06:
        return "bad_length", [*headers, (b"Content-Length", rng.choice([b"abc", b"-1", b"1e3", b" ", b"+5"]))]
    if framing < 0.1 and body:
        return "chunked", [*headers, (b"Transfer-Encoding", b"chunked")]
    return "plain", [*headers, (b"Content-Length", str(len(body)).encode())]


def _chunked(body: bytes, rng: Rng) -> bytes:
    if rng.random() < 0.3:
        return b"zz\r\n" + body + b"\r\n0\r\n\r\n"  # a chunk size that is not hex
    return b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)


METHODS = (b"GET",) * 6 + (b"POST",) * 5 + (b"HEAD", b"PUT", b"DELETE", b"PATCH", b"OPTIONS", b"TRACE", b"FOO",
                                            b"get", b"G(T")  # fmt: skip


def probe(rng: Rng) -> Probe:
    """One random request: method, target, headers and body each drawn independently."""
    method, target = rng.choice(METHODS), _target(rng)
    body_kind, make_body = rng.choices(BODIES, weights=BODY_WEIGHTS)[0]
    body = make_body(rng)
    framing, headers = _headers(rng, body)
    if framing == "declared_huge" or (framing == "bad_length" and rng.random() < 0.5):
        body = b""
    elif framing == "chunked":
        body = _chunked(body, rng)
    return Probe(kind=f"{body_kind}/{framing}", method=method, target=target, headers=tuple(headers), body=body)


# -- the wire --------------------------------------------------------------------------------------------


def _head(probe_: Probe) -> bytes:
    lines = [probe_.method + b" " + probe_.target + b" HTTP/1.1", b"Host: 127.0.0.1", b"Connection: close"]
    lines += [name + b": " + value for name, value in probe_.headers]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def _parse(raw: bytes, body: bytes) -> Answer:
    head, _, _ = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parts = status_line.split(" ")
    if len(parts) < 2 or not parts[1].isdigit():
        return Answer(status=0, body=raw[:200])
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Answer(status=int(parts[1]), headers=headers, body=body)


def send(port: int, probe_: Probe) -> Answer:
    """Send the raw request on a fresh connection; read to EOF (or only the head of an event stream)."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) as sock:
        with contextlib.suppress(OSError):  # the server may refuse and close before reading all: it answered
            sock.sendall(_head(probe_) + probe_.body)
        raw = b""
        try:
            while chunk := sock.recv(65_536):
                raw += chunk
                if b"\r\n\r\n" in raw and b"text/event-stream" in raw.partition(b"\r\n\r\n")[0]:
                    break  # a stream opened: its head is the answer
        except TimeoutError:
            return Answer(status=0, body=raw[:200])
        except OSError:
            pass
    return _parse(raw, raw.partition(b"\r\n\r\n")[2])


# -- the test --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def storm_server() -> Iterator[ApiServer]:
    """The API with tokens over a fresh, seeded PostgreSQL database."""
    with postgres_database() as url:
        run_async(seed(url))
        with serving(url, tokens=TOKENS) as server:
            yield server


def _problem(probe_: Probe, answer: Answer) -> str | None:
    """What is wrong with this answer to this request, if anything."""
    if answer.status == 0:
        return "no answer"
    if answer.status >= 500 and not (answer.status == 503 and probe_.target.startswith(b"/api/v1/stream")):
        return f"status {answer.status}"
    if answer.from_app and answer.status >= 400 and probe_.method != b"HEAD":
        body = json.loads(answer.body.decode("utf-8", errors="replace") or "{}")
        if not body.get("error") or (answer.status == 400 and not body.get("field")):
            return f"{answer.status} without error and field: {answer.body[:200]!r}"
    return None


def test_a_storm_of_malformed_requests_gets_no_500_and_no_traceback(
    storm_server: ApiServer, caplog: pytest.LogCaptureFixture
) -> None:
    rng = random.Random(SEED)
    probes = [probe(rng) for _ in range(REQUESTS)]

    with caplog.at_level(logging.INFO), ThreadPoolExecutor(max_workers=WORKERS) as pool:
        answers = list(pool.map(lambda p: send(storm_server.port, p), probes))
    health = send(storm_server.port, Probe(kind="health", method=b"GET", target=b"/healthz"))

    for probe_, answer in zip(probes, answers, strict=True):
        TALLY.add(probe_.kind, str(answer.status))
    print("\n" + TALLY.table())
    print(f"written to {TALLY.write()}")
    problems = [(p.method, p.target[:120], p.body[:80], problem) for p, a in zip(probes, answers, strict=True)
                if (problem := _problem(p, a)) is not None]  # fmt: skip
    tracebacks = [r.getMessage()[:300] for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]
    errors = [r.getMessage()[:300] for r in caplog.records if r.levelno >= logging.ERROR]
    assert problems == []
    assert tracebacks == [] and errors == []
    assert health.status == 200 and json.loads(health.body) == {"status": "ok"}
    assert len({a.status for a in answers}) > 5  # the storm reached many kinds of answer, not one wall
