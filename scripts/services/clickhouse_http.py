#!/usr/bin/env python3
"""A ClickHouse HTTP interface for tests, backed by chdb (the ClickHouse engine in-process).

TEST FIXTURE ONLY. Production runs a real ClickHouse server. This machine has no ClickHouse
server package, so this script puts the real ClickHouse engine (PyPI ``chdb``) behind the
subset of ClickHouse's HTTP interface that the Rust ``clickhouse`` crate (0.15, without
compression) uses. Table engines, SQL, type checks, data formats and error codes are the real
engine's; only the HTTP layer below is ours. Every query runs in one chdb session behind one
lock, so queries are serialised: fine for tests, useless for load.

Implemented:
  * ``GET /``, ``GET|HEAD /ping`` and ``GET /replicas_status``: ``Ok.\\n``.
  * ``POST /`` and ``GET /?query=``. SQL comes from the ``query`` URL parameter and/or the body.
    With a ``query`` parameter that is an ``INSERT ... FORMAT <fmt>``, the body (plain or
    ``Transfer-Encoding: chunked``; gzip/deflate ``Content-Encoding`` accepted) is the data, after
    any data inline behind the format name; the server writes it to a temporary file and runs
    ``INSERT ... FROM INFILE '<file>' FORMAT <fmt>``. An INSERT without FORMAT (``VALUES``) or
    any other statement is the ``query`` parameter, a newline, then the body. Without a
    ``query`` parameter the body is the SQL (an INSERT in it may carry inline data too).
  * A ``multipart/form-data`` body (the crate sends one when it has server-side parameters):
    its fields are taken like URL parameters (``query``, ``param_<name>``, settings).
    File parts (external tables) are refused.
  * URL parameters: ``database`` (``USE``; ``default`` when absent), ``default_format``
    (output format without a FORMAT clause; ``TabSeparated`` when absent), ``query_id``
    (echoed in ``X-ClickHouse-Query-Id``), ``param_<name>`` (server-side query parameters).
    Any other parameter that names a ClickHouse setting is applied with ``SET`` for this one
    request and reset afterwards; the rest (``session_id``, ``wait_end_of_query``, ``compress``,
    ``readonly``, ``role``, unknown names, ...) are ignored.
  * Authentication, with ``--user NAME --password SECRET``: a query (not ``/ping``) must carry
    that user and password as ClickHouse takes them (``X-ClickHouse-User``/``X-ClickHouse-Key``
    headers, which the Rust crate sends; ``user``/``password`` URL parameters; or HTTP basic
    auth), else it is refused as ClickHouse refuses it: 401, ``X-ClickHouse-Exception-Code: 516``
    (AUTHENTICATION_FAILED). Without ``--user`` anything is accepted.
  * HTTPS, with ``--tls-cert FILE --tls-key FILE`` (PEM): every connection is TLS.
  * Responses: 200 with the result bytes in the requested format (empty for DDL and INSERT),
    ``X-ClickHouse-Format``, ``X-ClickHouse-Query-Id`` and ``X-ClickHouse-Summary`` headers.
    Errors: 500, ``X-ClickHouse-Exception-Code: <code>`` (from the message's ``Code: N``,
    else 1000) and the exception text as the body. Responses are never compressed.

Not implemented: sessions (one shared session; temporary tables and SET leak between
requests), several statements in one request, ``decompress=1`` (ClickHouse's compressed
request bodies), compressed responses, external tables, progress headers, mid-stream
exceptions (results are materialised before the response starts).

Usage: python3 scripts/services/clickhouse_http.py --port 18123 --data DIR
       [--user NAME --password SECRET] [--tls-cert FILE --tls-key FILE]
DIR keeps the chdb database, so tables survive a restart. Binds 127.0.0.1 only and prints
``listening on 127.0.0.1:<port>`` once it accepts connections.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import signal
import ssl
import sys
import tempfile
import threading
import time
import traceback
import uuid
import zlib
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

HOST = "127.0.0.1"

# URL parameters that are part of the HTTP protocol or that we deliberately ignore.
PROTOCOL_PARAMS = {
    "query",
    "database",
    "default_format",
    "query_id",
    "session_id",
    "session_timeout",
    "session_check",
    "user",
    "password",
    "quota_key",
    "role",
    "compress",
    "decompress",
    "buffer_size",
    "wait_end_of_query",
    "client_protocol_version",
    "enable_http_compression",
    "http_zlib_compression_level",
    "send_progress_in_http_headers",
    "http_headers_progress_interval_ms",
    "add_http_cors_header",
    # Would make the shared session unable to reset it (SET is refused under readonly).
    "readonly",
}

# chdb formats that return Python objects rather than bytes; not ClickHouse formats.
PYTHON_ONLY_FORMATS = {"dataframe", "arrowtable", "debug"}

BINARY_FORMAT_PREFIXES = (
    "rowbinary",
    "native",
    "parquet",
    "arrow",
    "orc",
    "avro",
    "msgpack",
    "protobuf",
    "capnproto",
    "bson",
    "npy",
)

CODE_RE = re.compile(r"Code:\s*(\d+)")
DUPLICATED_PREFIX_RE = re.compile(r"^(Code: \d+\. DB::Exception: )(?=Code: \d+\.)")


class QueryError(Exception):
    """An error answered as ClickHouse would: HTTP 500 with an exception code."""

    def __init__(self, message: str, code: int = 1000):
        super().__init__(message)
        self.code = code


# --- SQL scanning ----------------------------------------------------------------------------


@dataclass
class Token:
    kind: str  # "word", "quoted", "string", "number", "punct"
    text: str
    start: int
    end: int
    depth: int  # parenthesis/bracket depth at the token

    def is_word(self, *words: str) -> bool:
        return self.kind == "word" and self.text.upper() in words


def tokenize(text: str) -> list[Token]:
    """Splits SQL into tokens, skipping comments, keeping string and quoted-name boundaries.

    Works on text decoded as latin-1 too, so token offsets are byte offsets of the original.
    """
    tokens: list[Token] = []
    i, n, depth = 0, len(text), 0
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
        elif text.startswith("--", i) or c == "#":
            j = text.find("\n", i)
            i = n if j < 0 else j + 1
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            i = n if j < 0 else j + 2
        elif c in "'\"`":
            j = i + 1
            while j < n:
                if text[j] == "\\":
                    j += 2
                elif text[j] == c:
                    if j + 1 < n and text[j + 1] == c:  # doubled quote
                        j += 2
                    else:
                        break
                else:
                    j += 1
            end = min(j + 1, n)
            tokens.append(Token("string" if c == "'" else "quoted", text[i:end], i, end, depth))
            i = end
        elif c.isalpha() or c == "_":
            j = i + 1
            while j < n and (text[j].isalnum() or text[j] in "_$"):
                j += 1
            tokens.append(Token("word", text[i:j], i, j, depth))
            i = j
        elif c.isdigit():
            j = i + 1
            while j < n and (text[j].isalnum() or text[j] in "._"):
                j += 1
            tokens.append(Token("number", text[i:j], i, j, depth))
            i = j
        else:
            if c in "([{":
                tokens.append(Token("punct", c, i, i + 1, depth))
                depth += 1
            elif c in ")]}":
                depth = max(depth - 1, 0)
                tokens.append(Token("punct", c, i, i + 1, depth))
            else:
                tokens.append(Token("punct", c, i, i + 1, depth))
            i += 1
    return tokens


def first_word(tokens: list[Token]) -> str:
    for token in tokens:
        if token.kind == "word":
            return token.text.upper()
        if token.text != "(":
            return ""
    return ""


def format_clause(tokens: list[Token]) -> tuple[int, Token] | None:
    """The first top-level ``FORMAT <name>`` of a statement: (index of FORMAT, name token).

    The first, because inline INSERT data may follow it and is not SQL.
    """
    for index, token in enumerate(tokens[:-1]):
        if token.depth != 0 or not token.is_word("FORMAT"):
            continue
        before = tokens[index - 1] if index > 0 else None
        if before is not None and (before.is_word("INTO", "TABLE") or before.text == "."):
            continue  # a table named `format`
        name = tokens[index + 1]
        if name.kind in ("word", "quoted") and not name.is_word(
            "FROM", "WHERE", "AS", "SETTINGS", "GROUP", "ORDER", "LIMIT", "UNION", "HAVING"
        ):
            return index, name
    return None


@dataclass
class InsertWithData:
    sql_before: str  # the statement up to where FROM INFILE goes
    sql_after: str  # [SETTINGS ...] FORMAT <name>
    inline_data: bytes  # data after the format name, in the statement text itself


def split_insert(statement: bytes) -> InsertWithData | None:
    """Splits ``INSERT ... [SETTINGS ...] FORMAT <fmt> [data]`` for rewriting with FROM INFILE.

    None when the statement is not an INSERT that takes data in a format (e.g. INSERT ... SELECT,
    INSERT ... VALUES, or one that already reads FROM INFILE).
    """
    text = statement.decode("latin-1")
    tokens = tokenize(text)
    if first_word(tokens) != "INSERT":
        return None
    clause = format_clause(tokens)
    if clause is None:
        return None
    format_index, name = clause
    top = [t for t in tokens[:format_index] if t.depth == 0]
    if any(t.is_word("SELECT", "WITH", "INFILE", "VALUES") for t in top):
        return None
    settings = next((t for t in top if t.is_word("SETTINGS")), None)
    cut = settings.start if settings else tokens[format_index].start
    # Data starts after the first newline behind the format name, or after the blanks before it.
    data_start = name.end
    while data_start < len(text) and text[data_start] in " \t\r\f\v":
        data_start += 1
    if data_start < len(text) and text[data_start] == "\n":
        data_start += 1
    return InsertWithData(
        sql_before=statement[:cut].decode("utf-8").rstrip(),
        sql_after=statement[cut : name.end].decode("utf-8"),
        inline_data=statement[data_start:],
    )


def quote_identifier(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def quote_string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def content_type_for(fmt: str) -> str:
    lower = fmt.lower()
    if lower.startswith(("tabseparated", "tsv")):
        return "text/tab-separated-values; charset=UTF-8"
    if lower.startswith("csv"):
        return "text/csv; charset=UTF-8; header=absent"
    if lower.startswith("json") or lower == "ndjson":
        return "application/json; charset=UTF-8"
    if lower.startswith(BINARY_FORMAT_PREFIXES):
        return "application/octet-stream"
    return "text/plain; charset=UTF-8"


def clean_error(message: str) -> str:
    """chdb repeats the ``Code: N. DB::Exception:`` prefix of nested errors; keep one."""
    message = message.strip()
    while True:
        shorter = DUPLICATED_PREFIX_RE.sub("", message, count=1)
        if shorter == message:
            return message
        message = shorter


# --- the engine ------------------------------------------------------------------------------


@dataclass
class Request:
    params: dict[str, str]  # URL parameters and form fields; the last of a repeated name wins
    body: bytes  # the request body; empty for GET and multipart requests


@dataclass
class Result:
    body: bytes
    fmt: str | None  # output format, None for an INSERT
    summary: dict[str, str]


class Engine:
    """One chdb session; every call takes the lock."""

    def __init__(self, data_dir: str, upload_dir: str):
        from chdb import session as chdb_session  # imported here so --help works without chdb

        self.lock = threading.Lock()
        self.session = chdb_session.Session(data_dir)
        # INSERT bodies go to files here; emptied now in case a killed server left some behind.
        self.upload_dir = upload_dir
        shutil.rmtree(upload_dir, ignore_errors=True)
        os.makedirs(upload_dir)
        names = self.session.query("SELECT name FROM system.settings", "TabSeparated").bytes()
        self.settings = set(names.decode("utf-8").split())

    def close(self) -> None:
        with self.lock:
            try:
                self.session.close()
            finally:
                shutil.rmtree(self.upload_dir, ignore_errors=True)

    def _run(self, sql: str, fmt: str = "TabSeparated", params: dict[str, str] | None = None):
        try:
            return self.session.query(sql, fmt, params=params or None)
        except Exception as error:  # chdb raises ChdbError/RuntimeError with ClickHouse's text
            message = clean_error(str(error))
            match = CODE_RE.search(message)
            raise QueryError(message, int(match.group(1)) if match else 1000) from None

    def execute(self, request: Request) -> Result:
        params = request.params
        query_params = {k[len("param_") :]: v for k, v in params.items() if k.startswith("param_")}
        settings = {
            k: v
            for k, v in params.items()
            if k not in PROTOCOL_PARAMS and not k.startswith("param_") and k in self.settings
        }
        default_format = params.get("default_format") or "TabSeparated"
        if default_format.lower() in PYTHON_ONLY_FORMATS:
            message = f"Code: 73. DB::Exception: Unknown format {default_format}. (UNKNOWN_FORMAT)"
            raise QueryError(message, 73)

        query_param = params.get("query")
        if query_param is not None:
            statement, tail = query_param.encode("utf-8"), request.body
        else:
            statement, tail = request.body, b""
        insert = split_insert(statement)
        upload = None
        if insert is not None:
            data = insert.inline_data + tail
            fd, upload = tempfile.mkstemp(dir=self.upload_dir, suffix=".data")
            with os.fdopen(fd, "wb") as file:
                file.write(data)
            sql = f"{insert.sql_before} FROM INFILE {quote_string(upload)} {insert.sql_after}"
        else:
            sql = (statement + b"\n" + tail if tail else statement).decode("utf-8", "replace")
        if not sql.strip():
            raise QueryError("Code: 62. DB::Exception: Empty query. (SYNTAX_ERROR)", 62)

        try:
            with self.lock:
                self._run(f"USE {quote_identifier(params.get('database') or 'default')}")
                applied = []
                try:
                    for name, value in settings.items():
                        self._run(f"SET {name} = {quote_string(value)}")
                        applied.append(name)
                    started = time.monotonic_ns()
                    result = self._run(sql, default_format, query_params)
                    elapsed = time.monotonic_ns() - started
                    body = result.bytes()
                finally:
                    for name in applied:
                        try:
                            self._run(f"SET {name} = DEFAULT")
                        except QueryError as error:
                            print(f"could not reset setting {name}: {error}", file=sys.stderr)
        finally:
            if upload is not None:
                os.unlink(upload)

        summary = {
            "read_rows": str(result.storage_rows_read()),
            "read_bytes": str(result.storage_bytes_read()),
            "written_rows": str(result.rows_written()),
            "written_bytes": str(result.bytes_written()),
            "total_rows_to_read": str(result.storage_rows_read()),
            "result_rows": str(result.rows_read()),
            "result_bytes": str(len(body)),
            "elapsed_ns": str(elapsed),
        }
        if insert is not None:
            return Result(body, None, summary)
        clause = format_clause(tokenize(sql))
        fmt = clause[1].text.strip("`\"") if clause else default_format
        return Result(body, fmt, summary)


# --- HTTP ------------------------------------------------------------------------------------


def parse_multipart(body: bytes, content_type: str) -> dict[str, str]:
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    if not match:
        raise QueryError("multipart/form-data request without a boundary", 1000)
    delimiter = b"--" + match.group(1).encode("latin-1")
    fields: dict[str, str] = {}
    for part in body.split(delimiter)[1:]:
        if part.startswith(b"--"):
            break
        part = part[2:] if part.startswith(b"\r\n") else part
        head, sep, value = part.partition(b"\r\n\r\n")
        if not sep:
            continue
        if value.endswith(b"\r\n"):
            value = value[:-2]
        lines = head.decode("latin-1").split("\r\n")
        disposition = next(
            (line for line in lines if line.lower().startswith("content-disposition")), ""
        )
        if "filename=" in disposition:
            raise QueryError("external tables (multipart file parts) are not supported here", 1000)
        name = re.search(r'name="([^"]*)"', disposition)
        if name:
            fields[name.group(1)] = value.decode("utf-8")
    return fields


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "chorus-clickhouse-http"
    engine: Engine  # set on the class by main()
    user: str | None = None  # --user: the one user a query must name (with its password)
    password: str | None = None

    def setup(self) -> None:
        if isinstance(self.request, ssl.SSLSocket):
            self.request.settimeout(10)
            try:
                self.request.do_handshake()
            finally:
                self.request.settimeout(None)
        super().setup()

    def do_HEAD(self) -> None:
        self.do_GET(head=True)

    def do_GET(self, head: bool = False) -> None:
        url = urlsplit(self.path)
        names = {name for name, _ in parse_qsl(url.query, keep_blank_values=True)}
        probe = url.path in ("/ping", "/replicas_status")
        if probe or (url.path in ("/", "") and "query" not in names):
            self.respond(200, b"Ok.\n", {"Content-Type": "text/html; charset=UTF-8"}, head=head)
            return
        self.handle_query()

    def do_POST(self) -> None:
        self.handle_query()

    def handle_query(self) -> None:
        url = urlsplit(self.path)
        if url.path not in ("/", ""):
            try:
                self.read_body()
            except (QueryError, ConnectionError, ValueError):
                self.close_connection = True
            self.respond(404, b"There is no handle " + url.path.encode() + b"\n", {})
            return
        params = dict(parse_qsl(url.query, keep_blank_values=True))
        query_id = params.get("query_id") or str(uuid.uuid4())
        headers = {"X-ClickHouse-Query-Id": query_id}
        if not self.authenticated(params):
            try:
                self.read_body()
            except (QueryError, ConnectionError, ValueError):
                self.close_connection = True
            headers["X-ClickHouse-Exception-Code"] = "516"
            headers["Content-Type"] = "text/plain; charset=UTF-8"
            message = (
                "Code: 516. DB::Exception: Authentication failed: password is incorrect, "
                "or there is no user with such name. (AUTHENTICATION_FAILED)\n"
            )
            self.respond(401, message.encode("utf-8"), headers)
            return
        try:
            body = self.read_body()
            content_type = self.headers.get("Content-Type", "")
            if content_type.lower().startswith("multipart/form-data"):
                params.update(parse_multipart(body, content_type))
                body = b""
            result = self.engine.execute(Request(params, body))
        except QueryError as error:
            self.log_error("query %s failed: %s", query_id, str(error).splitlines()[0][:300])
            headers["X-ClickHouse-Exception-Code"] = str(error.code)
            headers["Content-Type"] = "text/plain; charset=UTF-8"
            self.respond(500, (str(error) + "\n").encode("utf-8"), headers)
            return
        except ConnectionError:
            self.close_connection = True
            return
        except Exception as error:  # a bug here, not in the query: still answer like ClickHouse
            traceback.print_exc()
            self.close_connection = True  # the request may not have been read to its end
            headers["X-ClickHouse-Exception-Code"] = "1000"
            message = f"Code: 1000. DB::Exception: test server error: {error!r}\n"
            self.respond(500, message.encode("utf-8"), headers)
            return
        if result.fmt is not None:
            headers["X-ClickHouse-Format"] = result.fmt
            headers["Content-Type"] = content_type_for(result.fmt)
        else:
            headers["Content-Type"] = "text/plain; charset=UTF-8"
        headers["X-ClickHouse-Summary"] = json.dumps(result.summary, separators=(",", ":"))
        self.respond(200, result.body, headers)

    def authenticated(self, params: dict[str, str]) -> bool:
        """Whether the request names the configured user and password (always, without one)."""
        if self.user is None:
            return True
        user = self.headers.get("X-ClickHouse-User") or params.get("user")
        password = self.headers.get("X-ClickHouse-Key") or params.get("password")
        authorization = self.headers.get("Authorization", "")
        if user is None and authorization.lower().startswith("basic "):
            try:
                decoded = base64.b64decode(authorization[6:].strip()).decode("utf-8")
                user, _, password = decoded.partition(":")
            except ValueError:
                return False
        return user == self.user and password == self.password

    def read_body(self) -> bytes:
        if self.command in ("GET", "HEAD"):
            return b""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            body = self.read_chunked()
        else:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.read_exact(length)
        encoding = self.headers.get("Content-Encoding", "").strip().lower()
        if encoding in ("", "identity"):
            return body
        if encoding in ("gzip", "deflate", "x-gzip"):
            try:
                return zlib.decompress(body, zlib.MAX_WBITS | 32)  # gzip or zlib header
            except zlib.error as error:
                raise QueryError(f"cannot decompress the request body: {error}", 1000) from None
        raise QueryError(f"Content-Encoding {encoding!r} is not supported by this test server")

    def read_exact(self, length: int) -> bytes:
        data = self.rfile.read(length)
        if len(data) != length:
            raise ConnectionError("the client closed the connection mid-body")
        return data

    def read_chunked(self) -> bytes:
        chunks = []
        while True:
            line = self.rfile.readline(65537)
            if not line:
                raise ConnectionError("the client closed the connection mid-body")
            size = int(line.split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(chunks)
            chunks.append(self.read_exact(size))
            self.read_exact(2)  # CRLF after each chunk

    def respond(self, status: int, body: bytes, headers: dict[str, str], head=False) -> None:
        self.send_response(status, HTTPStatus(status).phrase)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - BaseHTTPRequestHandler's name
        sys.stderr.write(f"{time.strftime('%H:%M:%S')} {format % args}\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=18123)
    parser.add_argument(
        "--data", required=True, help="directory of the chdb database (kept across restarts)"
    )
    parser.add_argument("--quiet", action="store_true", help="do not log every request")
    parser.add_argument("--user", help="the user every query must name (ClickHouse's headers)")
    parser.add_argument("--password", default="", help="that user's password")
    parser.add_argument("--tls-cert", help="PEM certificate chain: serve HTTPS")
    parser.add_argument("--tls-key", help="PEM private key of --tls-cert")
    args = parser.parse_args()
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together")

    os.makedirs(args.data, exist_ok=True)
    upload_dir = os.path.join(tempfile.gettempdir(), f"chorus-clickhouse-http-{args.port}")
    engine = Engine(os.path.abspath(args.data), upload_dir)
    Handler.engine = engine
    Handler.user = args.user
    Handler.password = args.password
    if args.quiet:
        Handler.log_request = lambda self, code="-", size="-": None  # type: ignore[method-assign]
    try:
        server = ThreadingHTTPServer((HOST, args.port), Handler)
    except OSError as error:
        print(f"cannot listen on {HOST}:{args.port}: {error}", file=sys.stderr)
        engine.close()
        return 1
    server.daemon_threads = True
    if args.tls_cert:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.tls_cert, args.tls_key)
        # the handshake is done in each connection's own thread (Handler.setup), not in the
        # accept loop, so a client that stalls it holds up only itself
        server.socket = context.wrap_socket(
            server.socket, server_side=True, do_handshake_on_connect=False
        )

    def shut_down(signum, _frame) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, shut_down)
    signal.signal(signal.SIGINT, shut_down)
    print(f"listening on {HOST}:{args.port}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
        engine.close()
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
