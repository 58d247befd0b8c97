#!/usr/bin/env python3
"""Proves deploy/grafana/engaged.json against a real Prometheus (python3 stdlib only).

  scripts/check_dashboard.py --metrics-url http://127.0.0.1:PORT/metrics [--prometheus BIN]

Given the /metrics of a running `engaged demo` (or `engaged run`), starts Prometheus on a
free 127.0.0.1 port with deploy/prometheus/recording.yml and alerts.yml loaded, scraping
and evaluating every second; waits until the recording rules have values; then runs
EVERY expression of EVERY panel of the dashboard through the Prometheus HTTP API and
requires data (at least one series, no NaN). Template variables are evaluated as Grafana
would (their `label_values(...)` queries, through the API) and each is set to a real
value: the one for which most of the expressions that use it return data, the
dashboard's default first. `$__rate_interval` and `$__interval` become durations that fit
the scrape interval. Expressions that have no data yet are retried until --timeout.

Prints every expression with its result; a failure names the panel and the expression.
--allow-absent REGEX lets expressions matching REGEX have no data (printed as ABSENT,
not waited for): for series the data source cannot produce yet, named on the command
line so that the exception is visible where the check is run.
Prometheus is always stopped (finally, SIGINT, SIGTERM); with ENGAGED_E2E_PIDDIR set (as
scripts/e2e.sh does), its pid is also recorded there for the e2e cleanup.
"""

import argparse
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RULES = [os.path.join(ROOT, "deploy", "prometheus", f) for f in ("recording.yml", "alerts.yml")]


def log(msg):
    print(msg, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Prometheus:
    def __init__(self, binary, target, metrics_path, scrape_interval, workdir):
        self.dir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = os.path.join(workdir, "prometheus.yml")
        rules = "\n".join(f'  - "{r}"' for r in RULES)
        with open(config, "w", encoding="utf-8") as f:
            f.write(
                f"""# Written by scripts/check_dashboard.py (see deploy/prometheus/prometheus.yml).
global:
  scrape_interval: {scrape_interval}
  scrape_timeout: {scrape_interval}
  evaluation_interval: {scrape_interval}
rule_files:
{rules}
scrape_configs:
  - job_name: engaged
    metrics_path: "{metrics_path}"
    static_configs:
      - targets: ["{target}"]
"""
            )
        self.log_path = os.path.join(workdir, "prometheus.log")
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={os.path.join(workdir, 'data')}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=1h",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        self.pidfile = None
        piddir = os.environ.get("ENGAGED_E2E_PIDDIR")
        if piddir and os.path.isdir(piddir):
            self.pidfile = os.path.join(piddir, str(self.proc.pid))
            open(self.pidfile, "w").close()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        if self.pidfile and os.path.exists(self.pidfile):
            os.remove(self.pidfile)

    def tail(self, n=20):
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    def get(self, path, **params):
        url = f"{self.url}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params, doseq=True)
        with urllib.request.urlopen(url, timeout=10) as r:
            return json.load(r)

    def wait_ready(self, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"Prometheus exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise SystemExit(f"Prometheus not ready within {timeout}s:\n{self.tail()}")

    def query(self, expr):
        """(series count, problem or None)."""
        try:
            r = self.get("/api/v1/query", query=expr)
        except urllib.error.HTTPError as e:
            try:
                body = json.load(e)
                return 0, f"{body.get('errorType')}: {body.get('error')}"
            except ValueError:
                return 0, f"HTTP {e.code}"
        except (urllib.error.URLError, OSError) as e:
            return 0, f"request failed: {e}"
        if r.get("status") != "success":
            return 0, f"{r.get('errorType')}: {r.get('error')}"
        data = r["data"]
        if data["resultType"] in ("scalar", "string"):
            values = [data["result"][1]]
        else:
            values = [s["value"][1] for s in data["result"]]
        if not values:
            return 0, "no data"
        bad = [v for v in values if isinstance(v, str) and not math.isfinite(float(v))]
        if bad:
            return len(values), f"{len(bad)} of {len(values)} series are {bad[0]}"
        return len(values), None

    def label_values(self, query):
        """Grafana's `label_values(selector, label)` / `label_values(label)`."""
        m = re.fullmatch(r"\s*label_values\((.*),\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\)\s*", query, re.S)
        if m:
            selector, label = m.group(1), m.group(2)
            params = {"match[]": selector}
        else:
            m = re.fullmatch(r"\s*label_values\(\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\)\s*", query)
            if not m:
                raise SystemExit(f"variable query {query!r}: only label_values(...) is supported here")
            label, params = m.group(1), {}
        params["start"] = str(time.time() - 300)
        r = self.get(f"/api/v1/label/{label}/values", **params)
        return sorted(r.get("data") or [])


def substitute(expr, values, rate_interval, interval):
    expr = expr.replace("$__rate_interval", rate_interval).replace("${__rate_interval}", rate_interval)
    expr = expr.replace("$__interval", interval).replace("${__interval}", interval)
    for name, value in sorted(values.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace("${" + name + "}", value).replace("$" + name, value)
    return expr


def variable_names(expr):
    return set(re.findall(r"\$\{?([a-zA-Z_][a-zA-Z0-9_]*)", expr)) - {"__rate_interval", "__interval"}


def panel_expressions(dashboard):
    """[(panel title, refId, expr)] of every panel, rows' nested panels included."""
    out = []

    def walk(panels):
        for p in panels:
            if p.get("type") == "row":
                walk(p.get("panels") or [])
                continue
            targets = p.get("targets") or []
            if not targets:
                raise SystemExit(f"panel {p.get('title')!r} has no target")
            for t in targets:
                expr = (t.get("expr") or "").strip()
                if not expr:
                    raise SystemExit(f"panel {p.get('title')!r} target {t.get('refId')} has no expr")
                out.append((p.get("title", "?"), t.get("refId", "?"), expr))

    walk(dashboard.get("panels") or [])
    return out


def check(prom, dashboard, rate_interval, interval, timeout, allow_absent):
    exprs = panel_expressions(dashboard)
    variables = [v for v in dashboard.get("templating", {}).get("list", []) if v.get("type") == "query"]
    values = {}
    # Variables in their order (a later one may use an earlier one, like Grafana).
    for v in variables:
        name = v["name"]
        query = v.get("definition") or (v["query"]["query"] if isinstance(v.get("query"), dict) else v.get("query"))
        candidates = prom.label_values(substitute(query, values, rate_interval, interval))
        if not candidates:
            raise SystemExit(f"variable ${name}: {query} returns no value")
        default = (v.get("current") or {}).get("value")
        if default in candidates:
            candidates.remove(default)
            candidates.insert(0, default)
        using = [e for _, _, e in exprs if name in variable_names(e)
                 and variable_names(e) <= set(values) | {name}]
        best, best_score = candidates[0], -1
        for c in candidates:
            trial = dict(values, **{name: c})
            score = sum(1 for e in using if prom.query(substitute(e, trial, rate_interval, interval))[1] is None)
            if score > best_score:
                best, best_score = c, score
        values[name] = best
        log(f"variable ${name} = {best!r} (of {len(candidates)} values from {query}; "
            f"{best_score} of {len(using)} expressions using it have data)")

    def allowed(expr):
        return any(re.search(a, expr) for a in allow_absent)

    pending = [(i, e) for i, e in enumerate(exprs) if not allowed(e[2])]
    results = {}
    deadline = time.monotonic() + timeout
    while True:
        still = []
        for i, (title, ref, expr) in pending:
            n, problem = prom.query(substitute(expr, values, rate_interval, interval))
            results[i] = (n, problem)
            if problem:
                still.append((i, (title, ref, expr)))
        pending = still
        if not pending or time.monotonic() > deadline:
            break
        time.sleep(2)
    for i, (title, ref, expr) in enumerate(exprs):
        if allowed(expr):
            results[i] = prom.query(substitute(expr, values, rate_interval, interval))
    failed = absent = 0
    for i, (title, ref, expr) in enumerate(exprs):
        n, problem = results[i]
        shown = substitute(expr, values, rate_interval, interval)
        if problem and allowed(expr) and problem == "no data":
            absent += 1
            log(f"ABSENT [{title} / {ref}] {shown}\n      -> no data (allowed by --allow-absent)")
        elif problem:
            failed += 1
            log(f"FAIL  [{title} / {ref}] {shown}\n      -> {problem}")
        else:
            log(f"ok    [{title} / {ref}] {n} series: {shown}")
    panels = len({t for t, _, _ in exprs})
    chosen = ", ".join(f"{k}={v}" for k, v in values.items())
    if failed:
        log(f"dashboard check FAILED: {failed} of {len(exprs)} expressions of {panels} panels returned no data ({chosen})")
        return 1
    log(f"dashboard check passed: {len(exprs) - absent} of {len(exprs)} expressions of {panels} panels "
        f"returned data, {absent} allowed absent ({chosen})")
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--metrics-url", required=True, help="engaged's /metrics, e.g. http://127.0.0.1:9898/metrics")
    p.add_argument("--prometheus", default=shutil.which("prometheus") or "prometheus", help="Prometheus binary")
    p.add_argument("--dashboard", default=os.path.join(ROOT, "deploy", "grafana", "engaged.json"))
    p.add_argument("--scrape-interval", default="1s")
    p.add_argument("--rate-interval", default="20s", help="value of $__rate_interval")
    p.add_argument("--interval", default="5s", help="value of $__interval")
    p.add_argument("--timeout", type=float, default=120, help="seconds to wait for data")
    p.add_argument("--allow-absent", action="append", default=[], metavar="REGEX",
                   help="expressions matching REGEX may have no data (repeatable)")
    p.add_argument("--workdir", help="directory for Prometheus' config, data and log (default: a temporary one, removed)")
    args = p.parse_args()

    with open(args.dashboard, encoding="utf-8") as f:
        dashboard = json.load(f)
    url = urllib.parse.urlparse(args.metrics_url)
    if url.hostname not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit(f"--metrics-url {args.metrics_url}: expected a loopback address")
    # engaged must answer before Prometheus starts, or the first scrapes fail.
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(args.metrics_url, timeout=2) as r:
                r.read()
            break
        except (urllib.error.URLError, OSError) as e:
            if time.monotonic() > deadline:
                raise SystemExit(f"{args.metrics_url} does not answer: {e}")
            time.sleep(0.5)

    base = args.workdir or os.environ.get("ENGAGED_E2E_WORKDIR")
    if base:
        os.makedirs(base, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix="check-dashboard.", dir=base)
    prom = None

    def on_signal(signum, _frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    rc = 1
    try:
        prom = Prometheus(args.prometheus, url.netloc, url.path or "/metrics", args.scrape_interval, workdir)
        log(f"Prometheus on {prom.url} scraping {args.metrics_url} every {args.scrape_interval} (log: {prom.log_path})")
        prom.wait_ready(60)
        # Recording rules have values once a scrape and an evaluation happened; rates
        # need two scrapes within $__rate_interval.
        deadline = time.monotonic() + args.timeout
        for expr in ['up{job="engaged"} == 1', "engaged:web_page_views:sum", "engaged:events_consumed:rate5m"]:
            while prom.query(expr)[1] is not None:
                if time.monotonic() > deadline:
                    raise SystemExit(f"no data for {expr} within {args.timeout}s:\n{prom.tail()}")
                time.sleep(1)
        time.sleep(3)
        rc = check(prom, dashboard, args.rate_interval, args.interval,
                   max(10.0, deadline - time.monotonic()), args.allow_absent)
    finally:
        if prom is not None:
            prom.stop()
            if rc != 0:
                log(f"--- last lines of {prom.log_path}\n{prom.tail()}")
        if rc == 0 and not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
