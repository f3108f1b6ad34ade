"""A raw-socket OpenAI-style endpoint on 127.0.0.1 whose replies follow a script: answer at once, answer 500, or
trickle the reply one byte at a time (all of it from the status line on, or only the body). It stands in for a
judge server that is slow in the ways a per-read timeout does not catch."""

from __future__ import annotations

import json
import socket
import threading
import time

ACTIONS = ("ok", "500", "trickle", "trickle_body")


def reply_body(path: str, request: bytes, content: str) -> bytes:
    """``content`` as the reply to a chat request, or to each prompt of a completions request."""
    if path.endswith("/chat/completions"):
        return json.dumps(
            {"choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}]}
        ).encode()
    prompts = json.loads(request)["prompt"]
    count = len(prompts) if isinstance(prompts, list) else 1
    return json.dumps(
        {"choices": [{"index": i, "text": content, "finish_reason": "stop"} for i in range(count)]}
    ).encode()


class ScriptedServer:
    """``script``: one action per request in arrival order (the last repeats). ``byte_s``: the pause between the
    bytes of a trickled reply. Every reply closes its connection."""

    def __init__(self, script, content: str = "1", byte_s: float = 0.2):
        assert script and all(a in ACTIONS for a in script), script
        self.script, self.content, self.byte_s = list(script), content, byte_s
        self.requests: list[tuple[str, float]] = []  # (action, arrival time.monotonic())
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.1)
        self._threads: list[threading.Thread] = []
        self._accepter = threading.Thread(target=self._accept, daemon=True)
        self._accepter.start()

    @property
    def url(self) -> str:
        return "http://127.0.0.1:%d/v1" % self._sock.getsockname()[1]

    def _accept(self):
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except (TimeoutError, OSError):
                continue
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            t.start()
            self._threads.append(t)

    def _read_request(self, conn) -> tuple[str, bytes] | None:
        """(path, body), or None if the client left first."""
        conn.settimeout(10)
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = conn.recv(65536)
            if not chunk:
                return None
            buf += chunk
        head, _, body = buf.partition(b"\r\n\r\n")
        length = 0
        for line in head.decode("latin-1").split("\r\n")[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        while len(body) < length:
            chunk = conn.recv(65536)
            if not chunk:
                return None
            body += chunk
        return head.split(b" ")[1].decode("latin-1"), body[:length]

    def _serve(self, conn):
        with conn:
            try:
                request = self._read_request(conn)
                if request is None:
                    return
                with self._lock:
                    action = self.script[min(len(self.requests), len(self.script) - 1)]
                    self.requests.append((action, time.monotonic()))
                body = reply_body(*request, self.content) if action != "500" else b'{"error": "overloaded"}'
                status = b"500 Internal Server Error" if action == "500" else b"200 OK"
                head = (
                    b"HTTP/1.1 "
                    + status
                    + b"\r\nContent-Type: application/json\r\nContent-Length: "
                    + str(len(body)).encode()
                    + b"\r\nConnection: close\r\n\r\n"
                )
                if action in ("ok", "500"):
                    conn.sendall(head + body)
                    return
                if action == "trickle_body":
                    conn.sendall(head)
                    head = b""
                for i in range(len(head + body)):  # one byte at a time, until the client leaves
                    if self._stop.wait(self.byte_s):
                        return
                    conn.sendall((head + body)[i : i + 1])
            except OSError:  # the client gave up and closed: what a deadline is for
                return

    def close(self):
        self._stop.set()
        self._accepter.join(5)
        self._sock.close()
        for t in self._threads:
            t.join(5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
