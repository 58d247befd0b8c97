#!/usr/bin/env python3
"""The live page at / in a real browser (issue 14, item 5): headless Chromium loads it
from a running `engaged demo`.

Checks that
  * the page shows every family's key numbers (web, email, commerce, survey, customers,
    churn risk) and at least one chart (an <svg> with data points);
  * its numbers agree with /metrics at that moment: /metrics is scraped continually
    while Chromium loads the page, and the scrape of the same snapshot round (the page's
    `data-seq`, /metrics' `engaged_snapshot_sequence`) must have exactly the page's
    values (`data-value`); the shown text must be those values, rounded;
  * the page made no request outside engaged: Chromium is driven over its DevTools
    protocol (`--remote-debugging-pipe`), and every request the page's frame sent
    (`Network.requestWillBeSent`) must be for engaged's origin. Chromium's own service
    traffic (component updates, sign-in; it is not the page's and is not counted) and
    anything else cannot leave the machine: no name but 127.0.0.1 resolves
    (`--host-resolver-rules`). The DOM has no script and no src/href outside the page's
    origin, and the response forbids loading anything (Content-Security-Policy).
The DOM and the screenshot (default target/live-page.png) come from that same page load,
as `--dump-dom` and `--screenshot` would give them.

Everything binds 127.0.0.1 and everything started is stopped on exit. With
ENGAGED_E2E_PIDDIR set (scripts/e2e.sh), the pids of the demo and of Chromium are
registered there while they run; their command lines name the work directory, so
that e2e.sh's cleanup can kill them should this script itself be killed.

Python 3 standard library only.
"""

import argparse
import base64
import fcntl
import html.parser
import json
import http.client
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

FAMILIES = ["web", "email", "commerce", "survey", "customers", "churn"]


def log(msg):
    print(f"check_live_page: {msg}", file=sys.stderr, flush=True)


def fail(msg):
    raise SystemExit(f"check_live_page: FAILED: {msg}")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port, path, timeout=10):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, dict(r.getheaders()), r.read().decode("utf-8")
    finally:
        c.close()


# --- /metrics -----------------------------------------------------------------------

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text):
    """{(name, frozenset(labels)): value}"""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        if not m:
            continue
        labels = frozenset(LABEL.findall(m.group(2) or ""))
        out[(m.group(1), labels)] = float(m.group(3))
    return out


class Scraper(threading.Thread):
    """Scrapes /metrics every `every` seconds; keeps one scrape per snapshot round."""

    def __init__(self, port, every=0.1):
        super().__init__(daemon=True)
        self.port, self.every = port, every
        self.by_seq = {}
        self.stop = threading.Event()
        self.errors = 0

    def run(self):
        while not self.stop.is_set():
            try:
                _, _, body = get(self.port, "/metrics")
                samples = parse_metrics(body)
                seq = samples.get(("engaged_snapshot_sequence", frozenset()))
                if seq is not None:
                    self.by_seq.setdefault(int(seq), samples)
            except OSError:
                self.errors += 1
            self.stop.wait(self.every)


# --- The page ------------------------------------------------------------------------

class Page(html.parser.HTMLParser):
    """Value cells, charts, sections, and every src/href/script of the DOM."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.cells = []  # dicts: metric, window, value, text, section
        self.charts = []  # dicts: metric, window, points, polyline_points
        self.sections = []
        self.urls = []  # (tag, attr, value)
        self.tags = set()
        self.seq = None
        self.watermark_ms = None
        self._cell = None
        self._section = None
        self._chart = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.add(tag)
        for k in ("src", "href", "action", "formaction", "srcset", "poster", "data", "xlink:href"):
            if k in a:
                self.urls.append((tag, k, a[k]))
        if tag == "section" and "family" in (a.get("class") or ""):
            self._section = a.get("id")
            self.sections.append(self._section)
        if a.get("id") == "round":
            self.seq = int(a["data-seq"])
            self.watermark_ms = a.get("data-watermark-ms")
        if tag == "td" and "data-metric" in a:
            self._cell = {
                "metric": a["data-metric"],
                "window": a.get("data-window"),
                "value": a.get("data-value", ""),
                "text": "",
                "section": self._section,
            }
        if tag == "svg" and "data-metric" in a:
            self._chart = {
                "metric": a["data-metric"],
                "window": a.get("data-window"),
                "points": int(a.get("data-points", "0")),
                "polyline": 0,
                "section": self._section,
            }
        if tag == "polyline" and self._chart is not None:
            self._chart["polyline"] = len((a.get("points") or "").split())

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self.cells.append(self._cell)
            self._cell = None
        if tag == "svg" and self._chart is not None:
            self.charts.append(self._chart)
            self._chart = None
        if tag == "section":
            self._section = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell["text"] += data


def shown_matches(metric, text, value):
    """Whether the shown `text` is `value` as the page formats it (rounded)."""
    t = text.strip().replace(",", "")
    scale = 1.0
    if t.endswith("%"):
        t, scale = t[:-1], 100.0
    elif t.endswith(" s"):
        t = t[:-2]
    elif metric.endswith("_minor"):
        scale = 0.01
    try:
        shown = float(t)
    except ValueError:
        return False
    decimals = len(t.split(".")[1]) if "." in t else 0
    return abs(shown - value * scale) <= 0.5 * 10 ** -decimals + 1e-9 * max(1.0, abs(value))


def png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    if head[:8] != b"\x89PNG\r\n\x1a\n":
        return None
    return struct.unpack(">II", head[16:24])


# --- Processes -----------------------------------------------------------------------

class Started:
    """Every process this script starts, stopped on exit (pid files in ENGAGED_E2E_PIDDIR)."""

    def __init__(self):
        self.procs = []
        self.piddir = os.environ.get("ENGAGED_E2E_PIDDIR")

    def start(self, name, argv, **kw):
        p = subprocess.Popen(argv, start_new_session=True, **kw)
        self.procs.append((name, p))
        if self.piddir:
            open(os.path.join(self.piddir, str(p.pid)), "w").close()
        return p

    def stop(self, p, grace=15):
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                p.wait(grace)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait()
        if self.piddir:
            try:
                os.unlink(os.path.join(self.piddir, str(p.pid)))
            except FileNotFoundError:
                pass

    def stop_all(self):
        for _, p in reversed(self.procs):
            self.stop(p)


def chromium_argv(chromium, work):
    argv = [
        chromium,
        "--headless",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-default-apps",
        "--disable-extensions",
        "--disable-sync",
        "--metrics-recording-only",
        "--hide-scrollbars",
        # Keep Chromium's own background traffic (component updates, network time,
        # safe browsing…) down; none of it can leave the machine anyway.
        "--disable-field-trial-config",
        "--disable-breakpad",
        "--disable-client-side-phishing-detection",
        "--disable-component-extensions-with-background-pages",
        "--disable-domain-reliability",
        "--disable-features=NetworkTimeServiceQuerying,OptimizationHints,Translate,"
        "MediaRouter,AutofillServerCommunication,CertificateTransparencyComponentUpdater,"
        "SafeBrowsing,InterestFeedContentSuggestions,PrivacySandboxSettings4",
        "--no-pings",
        "--password-store=basic",
        "--use-mock-keychain",
        f"--user-data-dir={work}/chromium-profile",
        # Nothing but 127.0.0.1 resolves: whatever the page or the browser asks for
        # elsewhere cannot leave the machine.
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        "--remote-debugging-pipe",
    ]
    if os.geteuid() == 0:
        argv.append("--no-sandbox")  # Chromium refuses to run as root with its sandbox.
    return argv + ["about:blank"]


class Cdp:
    """Chromium's DevTools protocol over `--remote-debugging-pipe` (JSON messages ending
    in NUL: commands on the browser's fd 3, replies and events on its fd 4)."""

    def __init__(self, started, argv, work, name):
        to_browser, self._out = os.pipe()
        self._in, from_browser = os.pipe()
        # Above the descriptors bash renumbers to 3 and 4, so none is clobbered (dash
        # cannot redirect descriptors above 9).
        fds = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (to_browser, from_browser)]
        for fd in (to_browser, from_browser):
            os.close(fd)
        shell = f'exec 3<&{fds[0]} 4>&{fds[1]} {fds[0]}<&- {fds[1]}>&-; exec "$@"'
        self.log = open(os.path.join(work, f"{name}.log"), "wb")
        self.proc = started.start(
            name,
            [shutil.which("bash") or "/bin/bash", "-c", shell, "bash"] + argv,
            pass_fds=fds,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        for fd in fds:
            os.close(fd)
        self.started = started
        self.next_id = 0
        self.replies = {}
        self.events = []
        self.cond = threading.Condition()
        self.closed = False
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        buf = b""
        while True:
            chunk = os.read(self._in, 1 << 16)
            if not chunk:
                break
            buf += chunk
            *messages, buf = buf.split(b"\0")
            with self.cond:
                for m in messages:
                    msg = json.loads(m)
                    if "id" in msg:
                        self.replies[msg["id"]] = msg
                    else:
                        self.events.append(msg)
                self.cond.notify_all()
        with self.cond:
            self.closed = True
            self.cond.notify_all()

    def call(self, method, params=None, session=None, timeout=30):
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._out, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        with self.cond:
            while self.next_id not in self.replies:
                left = deadline - time.monotonic()
                if self.closed or left <= 0:
                    fail(f"chromium: no reply to {method} (see {self.log.name})")
                self.cond.wait(left)
            reply = self.replies.pop(self.next_id)
        if "error" in reply:
            fail(f"chromium: {method}: {reply['error']}")
        return reply["result"]

    def wait_event(self, method, session, timeout=30):
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for e in self.events:
                    if e["method"] == method and e.get("sessionId") == session:
                        return e
                left = deadline - time.monotonic()
                if self.closed or left <= 0:
                    fail(f"chromium: no {method} within {timeout}s (see {self.log.name})")
                self.cond.wait(left)

    def close(self):
        try:
            self.call("Browser.close", timeout=10)
        except SystemExit:
            pass
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            pass
        self.started.stop(self.proc)
        os.close(self._out)
        self.log.close()


def load_page(started, chromium, work, name, url, width=1280, height=2400):
    """Loads `url` in a fresh page: (DOM, PNG bytes, URLs of every request the page sent)."""
    cdp = Cdp(started, chromium_argv(chromium, work), work, name)
    try:
        deadline = time.monotonic() + 30
        while True:
            pages = [t for t in cdp.call("Target.getTargets")["targetInfos"] if t["type"] == "page"]
            if pages:
                break
            if time.monotonic() > deadline:
                fail("chromium opened no page")
            time.sleep(0.1)
        session = cdp.call("Target.attachToTarget",
                           {"targetId": pages[0]["targetId"], "flatten": True})["sessionId"]
        cdp.call("Network.enable", session=session)
        cdp.call("Page.enable", session=session)
        cdp.call("Emulation.setDeviceMetricsOverride",
                 {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
                 session=session)
        cdp.call("Page.navigate", {"url": url}, session=session)
        cdp.wait_event("Page.loadEventFired", session)
        time.sleep(0.5)  # late requests of the load (e.g. an icon) are counted too
        dom = cdp.call("Runtime.evaluate",
                       {"expression": "document.documentElement.outerHTML", "returnByValue": True},
                       session=session)["result"]["value"]
        png = base64.b64decode(cdp.call("Page.captureScreenshot", {"format": "png"},
                                        session=session)["data"])
        with cdp.cond:
            requests = [e["params"]["request"]["url"] for e in cdp.events
                        if e["method"] == "Network.requestWillBeSent" and e.get("sessionId") == session]
        return dom, png, requests
    finally:
        cdp.close()


# --- The check -----------------------------------------------------------------------

def wait_for_numbers(port, demo, deadline):
    """Until /metrics has a churn model and the page's history two chart points."""
    first_round = None
    while True:
        if demo.poll() is not None:
            fail(f"engaged demo exited with {demo.returncode}")
        try:
            _, _, body = get(port, "/metrics")
            s = parse_metrics(body)
            seq = s.get(("engaged_snapshot_sequence", frozenset()), 0)
            if seq >= 1 and first_round is None:
                first_round = time.monotonic()
            model = ("engaged_churn_at_risk_customers", frozenset()) in s
            # One chart point per 10 s of wall time: two need 10 s or more.
            if model and first_round is not None and time.monotonic() - first_round > 25:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            fail("the demo did not publish snapshots with a churn model in time")
        time.sleep(0.5)


def compare(page, samples):
    """Every cell against the scrape of the same round; returns the number compared."""
    problems = []
    for c in page.cells:
        labels = frozenset([("window", c["window"])]) if c["window"] else frozenset()
        want = samples.get((c["metric"], labels))
        if c["value"] == "":
            if want is not None:
                problems.append(f"{c['metric']}{{{c['window']}}}: absent on the page, {want} on /metrics")
            if c["text"].strip() != "–":
                problems.append(f"{c['metric']}{{{c['window']}}}: no value but shows {c['text']!r}")
            continue
        value = float(c["value"])
        if want is None:
            problems.append(f"{c['metric']}{{{c['window']}}}: {value} on the page, absent on /metrics")
        elif abs(value - want) > 1e-9 * max(1.0, abs(want)):
            problems.append(f"{c['metric']}{{{c['window']}}}: {value} on the page, {want} on /metrics")
        if not shown_matches(c["metric"], c["text"], value):
            problems.append(f"{c['metric']}{{{c['window']}}}: shows {c['text']!r} for {value}")
    if problems:
        fail("the page and /metrics disagree:\n  " + "\n  ".join(problems))
    return len(page.cells)


def check_page(page):
    missing = [f for f in FAMILIES if f not in page.sections]
    if missing:
        fail(f"families missing from the page: {missing}")
    for f in FAMILIES:
        cells = [c for c in page.cells if c["section"] == f]
        if not cells:
            fail(f"no numbers in section {f}")
        # Numbers, not only dashes (a dash is right where /metrics has no series, e.g. a
        # ratio without denominator, and compare() checks that).
        shown = [c for c in cells if c["value"] != ""]
        if len(shown) * 2 < len(cells):
            fail(f"{f}: only {len(shown)} of {len(cells)} numbers shown")
    drawn = [c for c in page.charts if c["points"] >= 2 and c["polyline"] == c["points"]]
    if not drawn:
        fail(f"no chart with data: {page.charts}")
    if "script" in page.tags or "iframe" in page.tags or "img" in page.tags:
        fail(f"the page has script, iframe or img elements: {sorted(page.tags)}")
    for tag, attr, v in page.urls:
        if not (v.startswith("/") and not v.startswith("//") or v.startswith("data:") or v.startswith("?")):
            fail(f"<{tag} {attr}={v!r}> points outside the page's origin")
    return drawn


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engaged", default="target/release/engaged")
    # Debian's /usr/bin/chromium is a wrapper that adds flags (remote extensions) and
    # Google API keys (sign-in traffic): run the browser itself where it is.
    real = "/usr/lib/chromium/chromium"
    ap.add_argument("--chromium", default=real if os.access(real, os.X_OK) else shutil.which("chromium") or "chromium")
    ap.add_argument("--screenshot", default="target/live-page.png")
    ap.add_argument("--timeout", type=float, default=180, help="seconds for the demo to have numbers")
    ap.add_argument("--attempts", type=int, default=5, help="page loads to find a scrape of its round")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()

    engaged = os.path.abspath(args.engaged)
    if not os.access(engaged, os.X_OK):
        fail(f"{engaged} is not an executable (cargo build --release)")
    base = os.environ.get("ENGAGED_E2E_WORKDIR")
    work = tempfile.mkdtemp(prefix="live-page.", dir=base)
    # The demo runs under a name inside the work directory, so that its command line
    # names it (scripts/e2e.sh kills left-over pids only if they do).
    os.makedirs(f"{work}/bin")
    os.symlink(engaged, f"{work}/bin/engaged")
    started = Started()
    ok = False
    try:
        port = free_port()
        demo_log = open(f"{work}/demo.log", "wb")
        demo = started.start(
            "demo",
            # --seconds: the demo also stops by itself should everything else fail.
            [f"{work}/bin/engaged", "demo", "--listen", f"127.0.0.1:{port}", "--table-every", "0",
             "--seconds", str(int(args.timeout) + 600)],
            stdout=demo_log,
            stderr=subprocess.STDOUT,
        )
        log(f"engaged demo on 127.0.0.1:{port} (pid {demo.pid}); work directory {work}")
        wait_for_numbers(port, demo, time.monotonic() + args.timeout)
        with open(f"{work}/demo.log", encoding="utf-8", errors="replace") as f:
            banner = f.read()
        if f"live page at http://127.0.0.1:{port}/" not in banner:
            fail(f"engaged demo did not print the page address:\n{banner}")

        status, headers, _ = get(port, "/")
        csp = {k.lower(): v for k, v in headers.items()}.get("content-security-policy", "")
        if status != 200 or "default-src 'none'" not in csp:
            fail(f"GET / answered {status} with Content-Security-Policy {csp!r}")

        url = f"http://127.0.0.1:{port}/"
        page = samples = None
        for attempt in range(1, args.attempts + 1):
            scraper = Scraper(port)
            scraper.start()
            time.sleep(0.5)
            dom, png, requests = load_page(started, args.chromium, work, f"chromium-{attempt}", url)
            time.sleep(0.5)
            scraper.stop.set()
            scraper.join()
            with open(f"{work}/page-{attempt}.html", "w", encoding="utf-8") as f:
                f.write(dom)
            page = Page()
            page.feed(dom)
            if page.seq is None:
                fail(f"no round number on the page; DOM in {work}/page-{attempt}.html")
            samples = scraper.by_seq.get(page.seq)
            log(f"attempt {attempt}: the page shows round {page.seq}; scraped rounds "
                f"{min(scraper.by_seq, default=None)}..{max(scraper.by_seq, default=None)}")
            if samples is not None:
                break
        if samples is None:
            fail(f"no scrape of the page's round in {args.attempts} attempts")

        compared = compare(page, samples)
        drawn = check_page(page)
        log(f"round {page.seq}: {compared} numbers agree with /metrics; "
            f"{len(drawn)} of {len(page.charts)} charts have data "
            f"(e.g. {drawn[0]['metric']} {drawn[0]['window'] or 'now'}: {drawn[0]['points']} points)")

        origin = f"127.0.0.1:{port}"
        if url not in requests:
            fail(f"the page load is not among the recorded requests {requests}: the check proves nothing")
        outside = [r for r in requests
                   if urllib.parse.urlsplit(r).scheme != "http" or urllib.parse.urlsplit(r).netloc != origin]
        if outside:
            fail(f"the page requested something outside engaged: {outside}")
        log(f"the page sent {len(requests)} requests, all to engaged: {sorted(set(requests))}")

        shot = os.path.abspath(args.screenshot)
        os.makedirs(os.path.dirname(shot), exist_ok=True)
        with open(shot, "wb") as f:
            f.write(png)
        size = png_size(shot)
        if size != (1280, 2400) or len(png) < 20_000:
            fail(f"screenshot {shot}: {size}, {len(png)} bytes")
        log(f"screenshot {shot} ({size[0]}x{size[1]}, {len(png)} bytes)")

        started.stop(demo)
        if demo.returncode not in (0, -signal.SIGTERM):
            fail(f"engaged demo exited with {demo.returncode} on SIGTERM")
        ok = True
        log("passed")
    finally:
        started.stop_all()
        if ok and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        elif not ok:
            log(f"work directory kept: {work}")


if __name__ == "__main__":
    main()
