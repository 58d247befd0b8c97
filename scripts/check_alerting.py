#!/usr/bin/env python3
"""ChurnRiskSpike end to end through a real Alertmanager (issue 14; python3 stdlib only).

  scripts/check_alerting.py [--engaged target/release/engaged] [--prometheus BIN]
                            [--alertmanager BIN] [--timeout 360] [--keep]

Starts, all on free 127.0.0.1 ports:
  * a webhook receiver (http.server) standing in for the pager;
  * Alertmanager (Debian `prometheus-alertmanager`) with a copy of
    deploy/alertmanager/alertmanager.yml in which only the webhook URL is rewritten to
    that receiver: route, grouping (alertname, window), group_wait (30s), group_interval
    and inhibition are the shipped ones; clustering off (--cluster.listen-address=);
  * `engaged demo --scenario churn-spike --time-scale 1000 --spike-after 140s`;
  * Prometheus scraping the demo and evaluating every second, with tuned copies of
    deploy/prometheus/recording.yml and alerts.yml (scripts/gen_prometheus_rule.py tune:
    the shipped files are never edited) and alerting to that Alertmanager.
Then waits (at most --timeout seconds from the demo's start) until the webhook receives
ChurnRiskSpike in state `firing`, and checks
  * the notification: receiver engaged-webhook, grouped by alertname and window, the
    alert's labels exactly {alertname, job, window=24h, service=engaged,
    category=business, severity=critical} (no `instance`: a business alert is about the
    consumer group) and its annotations (summary, description, runbook_url);
  * that it fired for the spike and not during the warm-up: Prometheus' own ALERTS
    history has no ChurnRiskSpike sample, pending or firing, before the spike (the
    cohort falls silent --spike-after into the demo) nor before engaged's watermark is
    12 hours of event time past it (the cohort's silence cannot be unusual earlier; the
    regulars cross about a day later), and the webhook got nothing of it before; while
    during the warm-up the alert WAS evaluated on real numbers (the 24h crossings past the
    minimum volume of 20, the tuned baseline present), so its silence means something.
Prints the 24h crossings, the baseline and the alert's state as they go.

Why these settings (measured; see the commit message for the series):
  * In the demo the churn model is first fitted 30 s after the start, and crossings are
    counted from then: the 24h crossings ramp up from 0 while the 24h window fills (a
    day of event time: 86 s at --time-scale 1000), then hold at ~75-100 (by ~130 s).
    --spike-after 140s puts the whole ramp before the spike. The regulars cross ~26 h
    of event time after it (~95 s later): the 24h crossings jump to ~470 and hold there
    for a day of event time (86 s), long enough for `for:` (15 s) and the shipped
    group_wait (30 s) with room to spare (at 1200x the hold, 72 s, was too tight; at
    600x the ramp alone takes 3 minutes).
  * The shipped baseline (average over 7 days) needs a week of history. The tuned one
    (BASELINE below) is the 2/3 quantile of the non-zero 24h crossings Prometheus has
    seen in the last 10 minutes: zeros are the time before the first model fit (no
    model, not "no crossings"); a quantile, not the mean, because in a few minutes of
    history the spike itself soon outweighs everything else (over 7 days it does not);
    and it exists only after 90 s of such history, so that the first few crossings
    cannot be 3 times their own baseline. Over a linear ramp a series stays below 1.5x
    the 2/3 quantile of its own history; measured, the 24h crossings stayed below ~1.7x
    this baseline before the spike (the alert needs more than 3x), and after it they
    were 5-6x it until they fell back.
  * `for:` 15s instead of 30m: long enough to need a held condition, short enough to
    fire well within the spike.

Everything it starts is stopped on exit (finally, SIGINT, SIGTERM); with
ENGAGED_E2E_PIDDIR set (scripts/e2e.sh), their pids are registered there and their
command lines name the work directory, for e2e.sh's cleanup. Nothing leaves
127.0.0.0/8. Needs PyYAML for scripts/gen_prometheus_rule.py (scripts/check_deploy.sh
installs it, and prometheus and prometheus-alertmanager).
"""

import argparse
import calendar
import http.server
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED_AM = os.path.join(ROOT, "deploy", "alertmanager", "alertmanager.yml")
SHIPPED_WEBHOOK = "http://127.0.0.1:5001/engaged-alerts"

ALERT = "ChurnRiskSpike"
FOR = "15s"
# The tuned `engaged:churn_risk_crossings:baseline` (see the module docstring). It is
# evaluated after engaged:churn_risk_crossings:sum in the same group, every second.
BASELINE = (
    "quantile_over_time(0.67, (engaged:churn_risk_crossings:sum > 0)[10m:1s])"
    " and count_over_time((engaged:churn_risk_crossings:sum > 0)[10m:1s]) >= 90"
)
EXPECTED_LABELS = {
    "alertname": ALERT,
    "job": "engaged",
    "window": "24h",
    "service": "engaged",
    "category": "business",
    "severity": "critical",
}
# The cohort's silence cannot be unusual before this much event time after the spike.
SILENT_BEFORE_S = 12 * 3600
# The shipped alert's minimum volume (alerts.yml): the 24h crossings must reach it during
# the warm-up for the alert's silence there to mean something.
MIN_VOLUME = 20
# PyYAML may live here (scripts/check_deploy.sh's fallback when pip cannot install
# into the interpreter's site-packages).
PYLIB = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "engaged-e2e", "pylib")


def log(msg):
    print(f"check_alerting: {msg}", flush=True)


def fail(msg):
    raise SystemExit(f"check_alerting: FAILED: {msg}")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read()


# --- Processes -------------------------------------------------------------------------

class Started:
    """Every process this script starts, stopped on exit (pid files in ENGAGED_E2E_PIDDIR)."""

    def __init__(self):
        self.procs = []
        self.piddir = os.environ.get("ENGAGED_E2E_PIDDIR")
        if self.piddir and not os.path.isdir(self.piddir):
            self.piddir = None

    def start(self, name, argv, log_path):
        out = open(log_path, "wb")
        try:
            p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 start_new_session=True)
        finally:
            out.close()
        p.name, p.log_path = name, log_path
        self.procs.append(p)
        if self.piddir:
            open(os.path.join(self.piddir, str(p.pid)), "w").close()
        return p

    def stop(self, p, grace=10):
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
        for p in reversed(self.procs):
            self.stop(p)

    def check_alive(self):
        for p in self.procs:
            if p.poll() is not None:
                fail(f"{p.name} exited with {p.returncode}:\n{tail(p.log_path)}")


def tail(path, n=25):
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


def wait_http(url, proc, timeout, what):
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            fail(f"{what} exited with {proc.returncode} at start-up:\n{tail(proc.log_path)}")
        try:
            status, _ = http_get(url, timeout=2)
            if status == 200:
                return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            fail(f"{what} did not answer {url} within {timeout}s:\n{tail(proc.log_path)}")
        time.sleep(0.2)


# --- The webhook receiver --------------------------------------------------------------

class Webhook:
    """Alertmanager's webhook receiver: keeps every notification with its arrival time."""

    def __init__(self):
        self.received = []  # (unix time, path, payload)
        self.lock = threading.Lock()
        hook = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    payload = json.loads(body)
                except ValueError:
                    payload = {"unparsable": body.decode("utf-8", "replace")}
                with hook.lock:
                    hook.received.append((time.time(), self.path, payload))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def notifications(self):
        with self.lock:
            return list(self.received)

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def churn_alerts(payload):
    return [a for a in payload.get("alerts") or [] if (a.get("labels") or {}).get("alertname") == ALERT]


# --- Prometheus ------------------------------------------------------------------------

class PromAPI:
    def __init__(self, port):
        self.url = f"http://127.0.0.1:{port}"

    def _get(self, path, **params):
        url = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as r:
            body = json.load(r)
        if body.get("status") != "success":
            raise RuntimeError(f"{path} {params}: {body}")
        return body["data"]

    def value(self, expr, at=None):
        """The single value of an instant query (None: no data)."""
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        result = self._get("/api/v1/query", **params)["result"]
        return float(result[0]["value"][1]) if result else None

    def range(self, expr, start, end, step=1):
        """[(time, value)] of the first series of a range query."""
        result = self._get("/api/v1/query_range", query=expr, start=f"{start:.3f}", end=f"{end:.3f}",
                           step=str(step))["result"]
        return [(float(t), float(v)) for t, v in result[0]["values"]] if result else []

    def alert_states(self):
        """{state: labels} of ChurnRiskSpike in Prometheus now (pending or firing)."""
        out = {}
        for a in self._get("/api/v1/alerts")["alerts"]:
            if a["labels"].get("alertname") == ALERT:
                out[a["state"]] = a["labels"]
        return out


def tuned_rules(out_dir):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH"), PYLIB) if p)
    cmd = [sys.executable, os.path.join(ROOT, "scripts", "gen_prometheus_rule.py"), "tune", "--out", out_dir,
           "--for", f"{ALERT}={FOR}", "--expr", f"engaged:churn_risk_crossings:baseline={BASELINE}"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        fail(f"{' '.join(cmd)} failed (rc={r.returncode}; PyYAML: scripts/check_deploy.sh installs it):\n"
             f"{r.stdout}{r.stderr}")
    files = [os.path.join(out_dir, f) for f in ("recording.yml", "alerts.yml")]
    with open(files[1], encoding="utf-8") as f:
        alerts = f.read()
    block = alerts[alerts.index(f"alert: {ALERT}"):]
    if not re.search(rf"\n\s+for: {FOR}\n", block.split("- alert:", 1)[0]):
        fail(f"the tuned {files[1]} does not have for: {FOR} in {ALERT}")
    promtool = shutil.which("promtool")
    if promtool:
        r = subprocess.run([promtool, "check", "rules", *files], capture_output=True, text=True)
        if r.returncode != 0:
            fail(f"promtool check rules on the tuned rules:\n{r.stdout}{r.stderr}")
    return files


def alertmanager_config(path, webhook_url):
    with open(SHIPPED_AM, encoding="utf-8") as f:
        text = f.read()
    if text.count(SHIPPED_WEBHOOK) != 1:
        fail(f"{SHIPPED_AM}: expected the webhook URL {SHIPPED_WEBHOOK} exactly once")
    with open(path, "w", encoding="utf-8") as f:
        f.write(f"# Copy of {os.path.relpath(SHIPPED_AM, ROOT)} written by scripts/check_alerting.py:\n"
                f"# only the webhook URL is rewritten, to the check's receiver.\n")
        f.write(text.replace(SHIPPED_WEBHOOK, webhook_url))
    amtool = shutil.which("amtool")
    if amtool:
        r = subprocess.run([amtool, "check-config", path], capture_output=True, text=True)
        if r.returncode != 0:
            fail(f"amtool check-config {path}:\n{r.stdout}{r.stderr}")


def prometheus_config(path, rule_files, demo_port, am_port):
    rules = "\n".join(f'  - "{r}"' for r in rule_files)
    with open(path, "w", encoding="utf-8") as f:
        f.write(f"""# Written by scripts/check_alerting.py (see deploy/prometheus/prometheus.yml).
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files:
{rules}
alerting:
  alertmanagers:
    - static_configs:
        - targets: ["127.0.0.1:{am_port}"]
scrape_configs:
  - job_name: engaged
    static_configs:
      - targets: ["127.0.0.1:{demo_port}"]
""")


SPIKE_LINE = re.compile(r"churn spike: at (\d{4}-\d\d-\d\d \d\d:\d\d) UTC of event time")


def spike_event_time(demo_log, proc, timeout=30):
    """Event time (unix s) of the spike, as the demo prints it (to the minute)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = SPIKE_LINE.search(tail(demo_log, 100))
        if m:
            return calendar.timegm(time.strptime(m.group(1), "%Y-%m-%d %H:%M"))
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    fail(f"the demo did not print its churn spike:\n{tail(demo_log)}")


def fmt(v, digits=0):
    return "-" if v is None else f"{v:.{digits}f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engaged", default=os.path.join(ROOT, "target", "release", "engaged"))
    ap.add_argument("--prometheus", default=shutil.which("prometheus") or "prometheus")
    ap.add_argument("--alertmanager",
                    default=shutil.which("prometheus-alertmanager") or shutil.which("alertmanager") or "alertmanager",
                    help="Alertmanager binary (Debian: /usr/bin/prometheus-alertmanager)")
    ap.add_argument("--time-scale", default="1000", help="engaged demo --time-scale")
    ap.add_argument("--spike-after", type=int, default=140, metavar="SECONDS", help="engaged demo --spike-after")
    ap.add_argument("--timeout", type=float, default=360,
                    help="seconds from the demo's start for the notification to arrive")
    ap.add_argument("--workdir", help="parent of the work directory (default: $ENGAGED_E2E_WORKDIR or /tmp)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs, configs, data)")
    args = ap.parse_args()

    engaged = os.path.abspath(args.engaged)
    for what, binary in (("engaged", engaged), ("prometheus", args.prometheus), ("alertmanager", args.alertmanager)):
        if not (os.access(binary, os.X_OK) or shutil.which(binary)):
            fail(f"{what}: {binary} is not an executable (cargo build --release; "
                 "scripts/check_deploy.sh installs prometheus and prometheus-alertmanager)")

    base = args.workdir or os.environ.get("ENGAGED_E2E_WORKDIR")
    if base:
        os.makedirs(base, exist_ok=True)
    work = tempfile.mkdtemp(prefix="check-alerting.", dir=base)
    # The demo runs under a name inside the work directory, so that its command line
    # names it (scripts/e2e.sh kills left-over pids only if they do).
    os.makedirs(f"{work}/bin")
    os.symlink(engaged, f"{work}/bin/engaged")

    def on_signal(signum, _frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    started = Started()
    webhook = None
    ok = False
    t_begin = time.monotonic()
    try:
        rule_files = tuned_rules(f"{work}/rules")
        log(f"tuned rules in {work}/rules: {ALERT} for: {FOR}; engaged:churn_risk_crossings:baseline = {BASELINE}")

        webhook = Webhook()
        webhook_url = f"http://127.0.0.1:{webhook.port}/engaged-alerts"
        am_port = free_port()
        alertmanager_config(f"{work}/alertmanager.yml", webhook_url)
        am = started.start("alertmanager", [
            args.alertmanager,
            f"--config.file={work}/alertmanager.yml",
            f"--storage.path={work}/alertmanager-data",
            f"--web.listen-address=127.0.0.1:{am_port}",
            f"--web.external-url=http://127.0.0.1:{am_port}/",
            "--cluster.listen-address=",  # no gossip port (it would bind 0.0.0.0:9094)
        ], f"{work}/alertmanager.log")
        wait_http(f"http://127.0.0.1:{am_port}/-/ready", am, 30, "Alertmanager")
        log(f"webhook receiver on {webhook_url}; Alertmanager on 127.0.0.1:{am_port} "
            f"(deploy/alertmanager/alertmanager.yml, webhook URL rewritten)")

        demo_port = free_port()
        demo_log = f"{work}/demo.log"
        t0 = time.time()
        demo = started.start("engaged demo", [
            f"{work}/bin/engaged", "demo", "--scenario", "churn-spike",
            "--time-scale", str(args.time_scale), "--spike-after", f"{args.spike_after}s",
            "--listen", f"127.0.0.1:{demo_port}", "--table-every", "0",
            # The demo also stops by itself should everything else fail.
            "--seconds", str(int(args.timeout) + 120),
        ], demo_log)
        spike_wall = t0 + args.spike_after
        prom_port = free_port()
        prometheus_config(f"{work}/prometheus.yml", rule_files, demo_port, am_port)
        prom = started.start("prometheus", [
            args.prometheus,
            f"--config.file={work}/prometheus.yml",
            f"--storage.tsdb.path={work}/prometheus-data",
            f"--web.listen-address=127.0.0.1:{prom_port}",
            f"--web.external-url=http://127.0.0.1:{prom_port}/",
            "--storage.tsdb.retention.time=1h",
        ], f"{work}/prometheus.log")
        wait_http(f"http://127.0.0.1:{demo_port}/metrics", demo, 30, "engaged demo")
        spike_event = spike_event_time(demo_log, demo)
        wait_http(f"http://127.0.0.1:{prom_port}/-/ready", prom, 30, "Prometheus")
        api = PromAPI(prom_port)
        log(f"engaged demo --scenario churn-spike --time-scale {args.time_scale} --spike-after {args.spike_after}s "
            f"on 127.0.0.1:{demo_port}; Prometheus on 127.0.0.1:{prom_port}; the cohort falls silent at "
            f"+{args.spike_after}s (event time {time.strftime('%Y-%m-%d %H:%M', time.gmtime(spike_event))} UTC)")

        # --- Wait for the notification, printing the series as they go -------------------
        deadline = t0 + args.timeout
        delivered = None
        first_state = {}
        last_print = 0.0
        log("   t  watermark-spike  crossings24h  baseline  3*baseline  alert")
        while delivered is None:
            now = time.time()
            if now > deadline:
                fail(f"no {ALERT} notification in state firing within {args.timeout:.0f}s of the demo's start; "
                     f"webhook got {len(webhook.notifications())} notifications; "
                     f"Prometheus: {api.alert_states() or 'not pending'}\n"
                     f"--- prometheus.log\n{tail(prom.log_path)}--- alertmanager.log\n{tail(am.log_path)}")
            started.check_alive()
            try:
                states = api.alert_states()
                for s in states:
                    first_state.setdefault(s, now)
                if now - last_print >= 5 or (states and not last_print):
                    wm = api.value("engaged_watermark_timestamp_seconds")
                    c24 = api.value('engaged:churn_risk_crossings:sum{window="24h"}')
                    base = api.value('engaged:churn_risk_crossings:baseline{window="24h"}')
                    log(f"{now - t0:4.0f}s  {fmt(None if wm is None else (wm - spike_event) / 3600, 1):>13}h  "
                        f"{fmt(c24):>12}  {fmt(base, 1):>8}  {fmt(None if base is None else 3 * base, 1):>10}  "
                        f"{','.join(sorted(states)) or '-'}")
                    last_print = now
            except (urllib.error.URLError, OSError, RuntimeError) as e:
                log(f"Prometheus API: {e}")
            for at, path, payload in webhook.notifications():
                if payload.get("status") == "firing" and any(a.get("status") == "firing" for a in churn_alerts(payload)):
                    delivered = (at, path, payload)
                    break
            time.sleep(1)

        at, path, payload = delivered
        log(f"webhook got {ALERT} firing {at - t0:.0f}s after the demo's start, "
            f"{at - spike_wall:.0f}s after the spike:\n{json.dumps(payload, indent=2, sort_keys=True)}")

        # --- The notification --------------------------------------------------------------
        problems = []
        if path != "/engaged-alerts":
            problems.append(f"posted to {path}, not /engaged-alerts")
        if payload.get("receiver") != "engaged-webhook":
            problems.append(f"receiver {payload.get('receiver')!r}, expected engaged-webhook")
        if payload.get("groupLabels") != {"alertname": ALERT, "window": "24h"}:
            problems.append(f"groupLabels {payload.get('groupLabels')}, expected alertname and window (the route's group_by)")
        alerts = churn_alerts(payload)
        if len(alerts) != 1:
            problems.append(f"{len(alerts)} {ALERT} alerts in the notification, expected one (one consumer group)")
        for a in alerts:
            if a.get("labels") != EXPECTED_LABELS:
                problems.append(f"labels {a.get('labels')}, expected exactly {EXPECTED_LABELS}")
            ann = a.get("annotations") or {}
            if not re.match(r"Churn risk spike: \d+ customers crossed the risk threshold in 24h", ann.get("summary", "")):
                problems.append(f"summary {ann.get('summary')!r}")
            if not ann.get("description"):
                problems.append("no description")
            if ann.get("runbook_url") != "docs/operations.md#churnriskspike":
                problems.append(f"runbook_url {ann.get('runbook_url')!r}")
            if a.get("status") != "firing":
                problems.append(f"status {a.get('status')!r}")

        # --- Silent through the warm-up, and not silent for lack of data -------------------
        # The quiet period: from the start until engaged's watermark is 12 hours of event
        # time past the spike. It contains the whole warm-up (model fit, the 24h window
        # filling) and the spike itself; the cohort's silence cannot be unusual in it.
        end = time.time()
        series = {
            "c24": 'engaged:churn_risk_crossings:sum{window="24h"}',
            "base": 'engaged:churn_risk_crossings:baseline{window="24h"}',
            "wm": "engaged_watermark_timestamp_seconds",
            "alert": f'count(ALERTS{{alertname="{ALERT}"}})',
        }
        got = {k: dict((round(t), v) for t, v in api.range(e, t0, end)) for k, e in series.items()}
        c24, b24, wm, alerting = got["c24"], got["base"], got["wm"], got["alert"]
        quiet_end = min((t for t, v in wm.items() if v >= spike_event + SILENT_BEFORE_S), default=None)
        first_alert = min(alerting, default=None)
        if quiet_end is None:
            problems.append(f"the watermark never got {SILENT_BEFORE_S // 3600}h past the spike")
            quiet_end = round(end)
        if first_alert is None:
            problems.append(f"Prometheus has no ALERTS history of {ALERT}")
        else:
            wm_then = wm.get(first_alert)
            log(f"{ALERT} first pending at +{first_alert - t0:.0f}s ({first_alert - spike_wall:+.0f}s from the spike; "
                f"watermark {fmt(None if wm_then is None else (wm_then - spike_event) / 3600, 1)}h past it), "
                f"firing at +{first_state.get('firing', end) - t0:.0f}s, delivered at +{at - t0:.0f}s")
            if first_alert < spike_wall:
                problems.append(f"{ALERT} was pending {spike_wall - first_alert:.0f}s BEFORE the spike (warm-up)")
            if first_alert < quiet_end:
                problems.append(f"{ALERT} was pending before the watermark was {SILENT_BEFORE_S // 3600}h "
                                f"past the spike (+{first_alert - t0:.0f}s; the quiet period ends at "
                                f"+{quiet_end - t0:.0f}s)")
        early = [n for n in webhook.notifications() if n[0] < max(spike_wall, quiet_end) and churn_alerts(n[2])]
        if early:
            problems.append(f"the webhook got {ALERT} in the quiet period: {early}")
        evaluated = [t for t in c24 if t < quiet_end and t in b24]
        peak = max((c24[t] for t in evaluated), default=0)
        ratio = max((c24[t] / b24[t] for t in evaluated if b24[t] > 0), default=None)
        log(f"quiet period (start to watermark {SILENT_BEFORE_S // 3600}h past the spike): +0..+{quiet_end - t0:.0f}s; "
            f"baseline present for {len(evaluated)}s of it (from +{min(evaluated, default=end) - t0:.0f}s), "
            f"24h crossings up to {peak:.0f} and at most {fmt(ratio, 2)}x the baseline then "
            f"(the alert needs > 3x and >= {MIN_VOLUME})")
        if len(evaluated) < 30 or peak < MIN_VOLUME:
            problems.append(f"the alert was evaluated on real numbers for only {len(evaluated)}s of the quiet period "
                            f"(24h crossings up to {peak:.0f}): its silence there proves nothing")
        # The series, for the record: the 24h crossings over the baseline every 10 s.
        rows = [f"{t - round(t0):+d}s {c24[t]:.0f}/{fmt(b24.get(t), 0)}" for t in sorted(c24)[::10]]
        log("24h crossings/baseline every 10 s from the demo's start (spike at "
            f"+{args.spike_after}s): " + ", ".join(rows))
        if problems:
            fail("\n  " + "\n  ".join(problems))

        for p in (demo, prom, am):
            started.stop(p)
            if p.returncode not in (0, -signal.SIGTERM):
                fail(f"{p.name} exited with {p.returncode} on SIGTERM:\n{tail(p.log_path)}")
        ok = True
        log(f"passed in {time.monotonic() - t_begin:.0f}s: {ALERT} reached the webhook through Alertmanager "
            f"{at - spike_wall:.0f}s after the spike, with labels {EXPECTED_LABELS}")
    finally:
        started.stop_all()
        if webhook is not None:
            webhook.stop()
        if ok and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            log(f"work directory kept: {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
