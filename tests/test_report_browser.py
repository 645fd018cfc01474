"""The report in a real browser: headless Chromium driven over the DevTools protocol.

A small real study is run, its report opened from disk, and the browser asked:
did any script error or console error happen, did every image load, can every
audio element play, does clicking a table header sort it, did any request
leave the machine, did the hostile speaker name run as a script (an alert)?
A screenshot is saved under the test's tmp dir and copied to a printed path.

Chromium comes from Debian's ``chromium`` package (``make chromium``; CI installs it).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import struct
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import html

import pandas as pd
import pytest

from test_report import make_report

CHROMIUM = os.environ.get("CODECLENS_CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--mute-audio", "--remote-debugging-port=0", "--window-size=1280,2000"]


class DevTools:
    """A minimal websocket client speaking the Chrome DevTools protocol to one page."""

    def __init__(self, ws_url: str, timeout: float = 30.0):
        assert ws_url.startswith("ws://")
        hostport, _, path = ws_url[5:].partition("/")
        host, _, port = hostport.partition(":")
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        req = (f"GET /{path} HTTP/1.1\r\nHost: {hostport}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
        self.sock.sendall(req.encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(1)
            if not chunk:
                raise ConnectionError("devtools closed during handshake")
            head += chunk
        assert b" 101 " in head.split(b"\r\n", 1)[0], head
        self.next_id = 0
        self.events: list[dict] = []

    def _recv_exact(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("devtools closed")
            buf += chunk
        return buf

    def _send_frame(self, payload: bytes, opcode: int = 1) -> None:
        mask = os.urandom(4)
        n = len(payload)
        head = bytes([0x80 | opcode])
        if n < 126:
            head += bytes([0x80 | n])
        elif n < 1 << 16:
            head += bytes([0x80 | 126]) + struct.pack(">H", n)
        else:
            head += bytes([0x80 | 127]) + struct.pack(">Q", n)
        self.sock.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def _recv_message(self) -> dict:
        data = b""
        while True:
            b0, b1 = self._recv_exact(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._recv_exact(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._recv_exact(8))[0]
            payload = self._recv_exact(n)
            op = b0 & 0x0F
            if op == 9:  # ping
                self._send_frame(payload, 10)
                continue
            if op == 8:
                raise ConnectionError("devtools sent close")
            data += payload
            if b0 & 0x80:
                return json.loads(data)

    def call(self, method: str, **params) -> dict:
        self.next_id += 1
        mid = self.next_id
        self._send_frame(json.dumps({"id": mid, "method": method, "params": params}).encode())
        while True:
            msg = self._recv_message()
            if msg.get("id") == mid:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            if "method" in msg:
                self.events.append(msg)

    def wait_event(self, method: str, timeout: float = 30.0) -> dict:
        t0 = time.time()
        for e in self.events:
            if e["method"] == method:
                return e
        while time.time() - t0 < timeout:
            msg = self._recv_message()
            if "method" in msg:
                self.events.append(msg)
                if msg["method"] == method:
                    return msg
        raise TimeoutError(method)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def _start_chromium(profile: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    port_file = profile / "DevToolsActivePort"
    t0 = time.time()
    while not port_file.is_file() or not port_file.read_text().strip():
        if proc.poll() is not None or time.time() - t0 > 60:
            raise RuntimeError(f"chromium did not start (exit {proc.poll()})")
        time.sleep(0.1)
    port = int(port_file.read_text().split()[0])
    t0 = time.time()
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as r:
                pages = [t for t in json.load(r) if t.get("type") == "page"]
            if pages:
                return proc, pages[0]["webSocketDebuggerUrl"]
        except OSError:
            pass
        if time.time() - t0 > 30:
            raise RuntimeError("chromium has no page target")
        time.sleep(0.2)


PROBE = r"""
new Promise(function(resolve){
  var audios = Array.prototype.slice.call(document.querySelectorAll('audio'));
  function settled(a){ return a.readyState >= 1 || a.error !== null; }
  var t0 = Date.now();
  (function poll(){
    if (audios.every(settled) || Date.now() - t0 > 15000) {
      var imgs = Array.prototype.slice.call(document.images).map(function(i){
        return {src: i.getAttribute('src'), complete: i.complete, w: i.naturalWidth, h: i.naturalHeight};
      });
      var aud = audios.map(function(a){
        return {src: a.getAttribute('src'), readyState: a.readyState, error: a.error ? a.error.code : null,
                canPlay: a.canPlayType('audio/wav'), duration: a.duration};
      });
      var cells = Array.prototype.map.call(document.querySelectorAll('td[data-finding]'), function(td){
        return {key: td.getAttribute('data-finding'), value: Number(td.getAttribute('data-value')),
                text: td.textContent, shaded: td.style.background.indexOf('rgba') >= 0};
      });
      resolve(JSON.stringify({images: imgs, audios: aud, title: document.title, cells: cells,
                              firstSection: document.querySelector('section').id,
                              text: document.body.innerText,
                              sections: document.querySelectorAll('section').length}));
    } else { setTimeout(poll, 100); }
  })();
})
"""

FILTER = r"""
(function(){
  var box = null;
  Array.prototype.forEach.call(document.querySelectorAll('div.tbl'), function(b){
    if (!box && b.querySelector('input.filter') && b.querySelector('button.showall')) { box = b; }
  });
  if (!box) { return JSON.stringify({found: false}); }
  function visible(){ return Array.prototype.filter.call(box.querySelectorAll('tbody tr'), function(r){ return !r.hidden; }).length; }
  var first = visible();
  box.querySelector('button.showall').click();
  var all = visible();
  var total = box.querySelectorAll('tbody tr').length;
  var input = box.querySelector('input.filter');
  var word = box.querySelector('tbody tr').cells[0].textContent;
  input.value = word; input.dispatchEvent(new Event('input'));
  var hits = visible();
  var expect = Array.prototype.filter.call(box.querySelectorAll('tbody tr'), function(r){
    return r.textContent.toLowerCase().indexOf(word.toLowerCase()) >= 0; }).length;
  input.value = 'no-such-row-zzz'; input.dispatchEvent(new Event('input'));
  var none = visible();
  return JSON.stringify({found: true, first: first, all: all, total: total, hits: hits, expect: expect, none: none});
})()
"""

SORT = r"""
(function(){
  var table = null;
  Array.prototype.forEach.call(document.querySelectorAll('table.sortable'), function(t){
    var hs = Array.prototype.map.call(t.tHead.rows[0].cells, function(c){ return c.textContent; });
    if (!table && hs.indexOf('mean_code') >= 0 && t.tBodies[0].rows.length > 2) { table = t; }
  });
  var idx = Array.prototype.map.call(table.tHead.rows[0].cells, function(c){ return c.textContent; }).indexOf('mean_code');
  function col(){ return Array.prototype.map.call(table.tBodies[0].rows, function(r){ return Number(r.cells[idx].getAttribute('data-v')); }); }
  var th = table.tHead.rows[0].cells[idx];
  th.click(); var up = col();
  th.click(); var down = col();
  return JSON.stringify({up: up, down: down, aria: th.getAttribute('aria-sort')});
})()
"""


@pytest.mark.timeout(300)
def test_report_in_headless_chromium(tmp_path, audio_folder, capsys):
    if not Path(CHROMIUM).is_file():
        msg = f"{CHROMIUM} not found: install Debian's chromium (make chromium)"
        if os.environ.get("CI"):
            pytest.fail(msg + "; the browser test is required in CI")
        pytest.skip(msg)
    report = make_report(tmp_path, audio_folder)
    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    proc, ws = _start_chromium(profile)
    dt = DevTools(ws)
    try:
        for domain in ("Page", "Runtime", "Log", "Network"):
            dt.call(f"{domain}.enable")
        dt.call("Page.navigate", url=report.resolve().as_uri())
        dt.wait_event("Page.loadEventFired")
        probe = json.loads(dt.call("Runtime.evaluate", expression=PROBE, awaitPromise=True, returnByValue=True)["result"]["value"])
        sort = json.loads(dt.call("Runtime.evaluate", expression=SORT, returnByValue=True)["result"]["value"])
        filt = json.loads(dt.call("Runtime.evaluate", expression=FILTER, returnByValue=True)["result"]["value"])
        shot = dt.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        png = tmp_path / "report.png"
        png.write_bytes(base64.b64decode(shot["data"]))
        dt.call("Runtime.evaluate", expression="1")  # drain late events
    finally:
        dt.close()
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    copy = Path(tempfile.gettempdir()) / "codeclens-report-browser-test.png"
    shutil.copyfile(png, copy)
    with capsys.disabled():
        print(f"\nreport screenshot: {copy} (also {png})")

    ev = dt.events
    errors = [e["params"] for e in ev if e["method"] == "Runtime.exceptionThrown"]
    errors += [e["params"] for e in ev if e["method"] == "Runtime.consoleAPICalled" and e["params"]["type"] in ("error", "assert")]
    errors += [e["params"]["entry"] for e in ev if e["method"] == "Log.entryAdded" and e["params"]["entry"]["level"] == "error"]
    assert not errors, errors
    assert not [e for e in ev if e["method"] == "Page.javascriptDialogOpening"], "the hostile speaker name ran as a script"
    urls = [e["params"]["request"]["url"] for e in ev if e["method"] == "Network.requestWillBeSent"]
    assert urls and all(u.startswith(("file://", "data:")) for u in urls), urls
    assert probe["sections"] >= 4
    assert probe["images"], "the report has figures"
    for img in probe["images"]:
        assert img["complete"] and img["w"] > 0 and img["h"] > 0, img
    assert probe["audios"], "the report has audio players"
    for a in probe["audios"]:
        assert a["canPlay"] in ("maybe", "probably") and a["error"] is None and a["readyState"] >= 1, a
        assert abs(a["duration"] - 0.5) < 0.01, a  # the 0.5 s tone the analysis wrote
    assert sort["up"] == sorted(sort["up"]) and sort["down"] == sorted(sort["down"], reverse=True)
    assert sort["aria"] == "descending" and len(sort["up"]) >= 3
    assert png.stat().st_size > 10_000
    # findings first, and every findings cell is the value of the analysis' own table
    assert probe["firstSection"] == "findings"
    root = report.parent
    per = pd.read_csv(root / "analyses" / "studytest" / "audio" / "per_speaker.csv")
    want = {f"{r.store}|1|{r.speaker}|mean code": float(r.mean_code) for r in per.itertuples()}
    got = {html.unescape(c["key"]): c["value"] for c in probe["cells"]}
    assert want and set(want) <= set(got), (want, got)
    assert all(abs(got[k] - v) < 1e-12 for k, v in want.items())
    # filter and "show all" work on a long table
    assert filt["found"] and filt["first"] < filt["all"] == filt["total"]
    assert filt["hits"] == filt["expect"] >= 1 and filt["none"] == 0
    # no absolute path of this machine anywhere in the page (run dir, corpus, home)
    page = report.read_text()
    for p in {str(root.resolve()), str(tmp_path.resolve()), str(audio_folder.resolve()), str(Path.home())}:
        assert p not in page and p not in probe["text"], p
