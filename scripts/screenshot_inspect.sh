#!/usr/bin/env bash
# Screenshot one sample (with its judges' scores) in the Inspect log viewer, headless.
#
#   scripts/screenshot_inspect.sh LOG_DIR OUT_PNG [LOG_FILE [SAMPLE_ID [TAB]]]
#
# Starts `inspect view --log-dir LOG_DIR --port $PORT` in the background, waits until it
# answers, opens the sample in Debian's Chromium (headless, remote debugging on $PORT+1),
# waits until the sample and its scores are on the page, saves a PNG and stops both.
# LOG_FILE defaults to the first *.eval file of LOG_DIR, SAMPLE_ID to that log's first sample,
# TAB to `scoring` (others: messages, transcript, info, json).
#
# The viewer loads its data through IndexedDB and web workers, which stall under Chromium's
# `--screenshot --virtual-time-budget`: the page is therefore driven over the DevTools
# protocol (a few lines of standard-library Python below), in real time.
#
# Environment: PORT (default 7575), WIDTH x HEIGHT (default 1280 x 860), WAIT seconds
# (default 60), CHROMIUM (default /usr/bin/chromium; `apt-get install -y chromium`),
# INSPECT (default: the project's .venv/bin/inspect, else `inspect`), PYTHON (default: the
# project's .venv/bin/python, else python3; it must have inspect_ai when SAMPLE_ID is not given).
set -euo pipefail

usage() {
    echo "usage: $0 LOG_DIR OUT_PNG [LOG_FILE [SAMPLE_ID [TAB]]]" >&2
    exit 2
}
[[ $# -ge 2 && $# -le 5 ]] || usage

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
log_dir="$1"
out_png="$2"
log_file="${3:-}"
sample_id="${4:-}"
tab="${5:-scoring}"
port="${PORT:-7575}"
cdp_port="$((port + 1))"
width="${WIDTH:-1280}"
height="${HEIGHT:-860}"
wait_s="${WAIT:-60}"
chromium="${CHROMIUM:-/usr/bin/chromium}"
if [[ -x "$repo/.venv/bin/inspect" ]]; then inspect_bin="${INSPECT:-$repo/.venv/bin/inspect}"; else inspect_bin="${INSPECT:-inspect}"; fi
if [[ -x "$repo/.venv/bin/python" ]]; then python="${PYTHON:-$repo/.venv/bin/python}"; else python="${PYTHON:-python3}"; fi

die() {
    echo "error: $*" >&2
    exit 1
}
[[ -d "$log_dir" ]] || die "$log_dir: no such directory"
[[ -x "$chromium" ]] || die "$chromium not found; install it with: apt-get install -y chromium"
command -v "$inspect_bin" > /dev/null || die "$inspect_bin not found (pip install inspect-ai)"
command -v curl > /dev/null || die "curl not found"
mkdir -p "$(dirname "$out_png")"

if [[ -z "$log_file" ]]; then
    log_file="$(find "$log_dir" -maxdepth 1 -name '*.eval' -printf '%f\n' | sort | head -n 1)"
    [[ -n "$log_file" ]] || die "$log_dir: no .eval logs"
fi
[[ -f "$log_dir/$log_file" ]] || die "$log_dir/$log_file: no such log"
if [[ -z "$sample_id" ]]; then
    sample_id="$("$python" -c '
import sys
from inspect_ai.log import read_eval_log
print(read_eval_log(sys.argv[1], header_only=True).eval.dataset.sample_ids[0])
' "$log_dir/$log_file")"
fi

for p in "$port" "$cdp_port"; do
    if curl -s -o /dev/null "http://127.0.0.1:$p/"; then die "port $p is in use; set PORT"; fi
done

work="$(mktemp -d)"
server_pid=""
chrome_pid=""
cleanup() {
    local pid
    for pid in "$chrome_pid" "$server_pid"; do
        if [[ -n "$pid" ]]; then kill "$pid" 2> /dev/null || true; fi
    done
    wait 2> /dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

"$inspect_bin" view --log-dir "$log_dir" --port "$port" > "$work/view.log" 2>&1 &
server_pid=$!
"$chromium" --headless --no-sandbox --disable-gpu --hide-scrollbars --no-first-run \
    --user-data-dir="$work/profile" --remote-debugging-port="$cdp_port" \
    --window-size="$width,$height" about:blank > "$work/chromium.log" 2>&1 &
chrome_pid=$!

wait_for() { # URL WHAT
    local i
    for ((i = 0; i < wait_s * 4; i++)); do
        if curl -sf -o /dev/null "$1"; then return 0; fi
        sleep 0.25
    done
    echo "--- $2 log:" >&2
    tail -n 20 "$work/$2.log" >&2 || true
    die "$2 did not answer on $1 within ${wait_s}s"
}
wait_for "http://127.0.0.1:$port/" view
wait_for "http://127.0.0.1:$cdp_port/json/version" chromium

id_enc="$("$python" -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "$sample_id")"
url="http://127.0.0.1:$port/#/logs/$log_file/samples/sample/$id_enc/1/$tab"

"$python" - "$cdp_port" "$url" "$out_png" "$sample_id" "$wait_s" "$tab" << 'PY'
"""Open URL in the running headless Chromium, wait until the sample is shown, screenshot."""
import base64
import json
import os
import socket
import struct
import sys
import time
import urllib.request

cdp_port, url, out_png, sample_id, wait_s, tab = sys.argv[1:7]


class DevTools:
    """A minimal WebSocket client (RFC 6455, text frames) for one DevTools target."""

    def __init__(self, ws_url: str) -> None:
        hostport, path = ws_url.removeprefix("ws://").split("/", 1)
        host, port = hostport.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=60)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            f"GET /{path} HTTP/1.1\r\nHost: {hostport}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        self.buf = bytearray()
        while b"\r\n\r\n" not in self.buf:
            self.buf += self.sock.recv(4096)
        head, _, rest = bytes(self.buf).partition(b"\r\n\r\n")
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            sys.exit(f"error: DevTools handshake failed: {head[:120]!r}")
        self.buf = bytearray(rest)
        self.next_id = 0

    def _read(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                sys.exit("error: DevTools connection closed")
            self.buf += chunk
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def _send(self, obj: dict) -> None:
        data = json.dumps(obj).encode()
        mask = os.urandom(4)
        n = len(data)
        if n < 126:
            head = bytes([0x81, 0x80 | n])
        elif n < 1 << 16:
            head = bytes([0x81, 0x80 | 126]) + struct.pack(">H", n)
        else:
            head = bytes([0x81, 0x80 | 127]) + struct.pack(">Q", n)
        self.sock.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))

    def _recv(self) -> dict:
        message = b""
        while True:
            b0, b1 = self._read(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._read(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._read(8))[0]
            message += self._read(n)
            if b0 & 0x80:
                return json.loads(message)

    def call(self, method: str, **params) -> dict:
        self.next_id += 1
        self._send({"id": self.next_id, "method": method, "params": params})
        while True:
            reply = self._recv()
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    sys.exit(f"error: {method}: {reply['error']}")
                return reply["result"]


new = urllib.request.Request(f"http://127.0.0.1:{cdp_port}/json/new?about:blank", method="PUT")
with urllib.request.urlopen(new) as r:
    target = json.load(r)
page = DevTools(target["webSocketDebuggerUrl"])
page.call("Page.navigate", url=url)
deadline = time.time() + float(wait_s)
text = ""
while time.time() < deadline:
    res = page.call(
        "Runtime.evaluate",
        expression="document.body ? document.body.innerText : ''",
        returnByValue=True,
    )
    text = str(res["result"].get("value", "")).lower()
    if sample_id.lower() in text and (tab != "scoring" or "explanation" in text):
        break
    time.sleep(0.5)
else:
    sys.exit(f"error: sample {sample_id} did not appear within {wait_s}s; page: {text[:300]!r}")
time.sleep(1.0)  # let the last layout settle
shot = page.call("Page.captureScreenshot", format="png")
with open(out_png, "wb") as f:
    f.write(base64.b64decode(shot["data"]))
PY

echo "wrote $out_png ($(stat -c %s "$out_png") bytes): $log_file sample $sample_id ($tab)"
