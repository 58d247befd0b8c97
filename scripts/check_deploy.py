#!/usr/bin/env python3
"""Static checks of deploy/ against engaged's sources (run by scripts/check_deploy.sh).

Reads the manifests, rules, dashboard and docs, and engaged's real flags and defaults
(src/config/mod.rs, src/main.rs or `engaged run --help`, src/http/mod.rs,
src/telemetry/, README.md, Cargo.toml), and fails with one line per problem:

* Kubernetes: every YAML document parses and has the fields its kind needs; selectors
  match; the engaged container's image tag is the crate version, its arguments are real
  flags of `engaged run`, its port is the default HTTP port of src/config/mod.rs and the
  port of `listen` in the ConfigMap, its probes are /healthz (liveness) and /readyz
  (readiness) on that port; the ConfigMap's TOML keys are real configuration keys;
  terminationGracePeriodSeconds > shutdown_timeout; enableServiceLinks is false;
  resources follow the sizing rule of deployment.yaml; the windows the alerts read are
  configured.
* Prometheus: every alert has `for:`, severity, service and category labels, summary,
  description and a runbook_url whose anchor is a heading of docs/operations.md; every
  alert has a test case where it fires and one where it stays silent; every metric name
  in the rules and the dashboard exists in src/telemetry/; every recorded name used
  is recorded; recording rules never average or sum ratios.
* Grafana: the dashboard parses, every panel has a target with an expression, the
  template variables window, site, channel and campaign exist, and panels read the
  recording rule where one exists.
* Alertmanager: business alerts are what the inhibition rule targets.

Needs PyYAML. Exit status 1 if anything is wrong.
"""

import json
import os
import re
import subprocess
import sys
import tomllib

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
K8S = os.path.join(ROOT, "deploy", "kubernetes")
PROM = os.path.join(ROOT, "deploy", "prometheus")

problems = []
passed = []
warnings = []


def fail(msg):
    problems.append(msg)


def ok(msg):
    passed.append(msg)


def read(*parts):
    with open(os.path.join(ROOT, *parts), encoding="utf-8") as f:
        return f.read()


# --- engaged's real configuration, flags and metrics ---------------------------------


def config_fields():
    """Fields of RawConfig (the keys serde accepts) and their defaults."""
    src = read("src", "config", "mod.rs")
    m = re.search(r"pub struct RawConfig \{(.*?)\n\}", src, re.S)
    fields = re.findall(r"^\s*pub (\w+):", m.group(1), re.M)
    d = re.search(r"impl Default for RawConfig \{.*?RawConfig \{(.*?)\n        \}", src, re.S)
    defaults = dict(re.findall(r"^\s*(\w+): \"([^\"]*)\"\.into\(\)", d.group(1), re.M))
    return fields, defaults


def readme_keys():
    text = read("README.md")
    keys = set()
    for line in text.splitlines():
        m = re.match(r"\|\s*(`[a-z_]+`(?:,\s*`[a-z_]+`)*)\s*\|", line)
        if m:
            keys.update(re.findall(r"`([a-z_]+)`", m.group(1)))
    return keys


def run_flags():
    """Long flags of `engaged run`: from the built binary when there is one."""
    for build in ("release", "debug"):
        binary = os.path.join(ROOT, "target", build, "engaged")
        if os.access(binary, os.X_OK):
            try:
                out = subprocess.run([binary, "run", "--help"], capture_output=True, text=True, timeout=20).stdout
                flags = set(re.findall(r"--([a-z][a-z0-9-]*)", out))
                if flags:
                    return flags, f"`{os.path.relpath(binary, ROOT)} run --help`"
            except (OSError, subprocess.TimeoutExpired):
                pass
    # No binary: every `#[arg(long ...)]` field of src/main.rs.
    src = read("src", "main.rs")
    flags = set()
    for m in re.finditer(r"#\[arg\(long[^\]]*\]\s*(?:#\[[^\]]*\]\s*)*(\w+):", src):
        flags.add(m.group(1).replace("_", "-"))
    return flags, "src/main.rs"


def http_routes():
    return set(re.findall(r'\.route\("([^"]+)"', read("src", "http", "mod.rs")))


def metric_names():
    """Every family name engaged exposes (src/telemetry/mod.rs and windowed.rs), with the
    suffixes the exposition adds: breakdown families and histogram series."""
    src = read("src", "telemetry", "mod.rs") + read("src", "telemetry", "windowed.rs")
    names = set(re.findall(r'"(engaged_[a-z0-9_]+)"', src))
    # Windowed families: (name, help, Rows::X, extract).
    page_only = set()
    not_page_only = set()
    for name, rows in re.findall(r'\(\s*"(engaged_[a-z0-9_]+)",\s*"(?:[^"\\]|\\.)*",\s*Rows::(\w+)', src):
        if rows == "Web":
            names.update({name + "_by_site", name + "_by_channel"})
        elif rows == "Email":
            names.add(name + "_by_campaign")
        elif rows == "Page":
            # Published for `page` rows only: `_by_page`, never without the suffix.
            names.add(name + "_by_page")
            page_only.add(name)
        if rows != "Page":
            not_page_only.add(name)
    names -= page_only - not_page_only
    names.update({"engaged_web_sessions_active_by_site", "engaged_web_sessions_active_by_channel"})
    # Histograms.
    for name in re.findall(r'HistogramOpts::new\(\s*"(engaged_[a-z0-9_]+)"', src) + ["engaged_web_session_duration_seconds"]:
        names.update({name + "_bucket", name + "_sum", name + "_count"})
    return names


def duration_seconds(text):
    total = 0.0
    for n, unit in re.findall(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)", text):
        total += float(n) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}[unit]
    return total


def mib(q):
    m = re.fullmatch(r"(\d+)(Ki|Mi|Gi|K|M|G)?", str(q))
    if not m:
        raise ValueError(q)
    n = int(m.group(1))
    return n * {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024, "K": 1e3 / 2**20, "M": 1e6 / 2**20, "G": 1e9 / 2**20, None: 1 / 2**20}[m.group(2)]


def config_bytes_mib(text):
    m = re.fullmatch(r"\s*(\d+)\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)?\s*", text)
    n, unit = int(m.group(1)), m.group(2) or "B"
    return n * {"B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}[unit] / 2**20


# --- Kubernetes ---------------------------------------------------------------------


def load_manifests():
    kustomization = yaml.safe_load(read("deploy", "kubernetes", "kustomization.yaml"))
    docs = []
    for name in kustomization.get("resources", []):
        path = os.path.join(K8S, name)
        if not os.path.exists(path):
            fail(f"kustomization.yaml: resource {name} does not exist")
            continue
        try:
            with open(path, encoding="utf-8") as f:
                for i, doc in enumerate(yaml.safe_load_all(f)):
                    if doc is not None:
                        docs.append((f"{name}#{i}", doc))
        except yaml.YAMLError as e:
            fail(f"{name}: does not parse: {e}")
    listed = set(kustomization.get("resources", []))
    for name in sorted(os.listdir(K8S)):
        if name.endswith((".yaml", ".yml")) and name != "kustomization.yaml" and name not in listed:
            fail(f"deploy/kubernetes/{name} is not in kustomization.yaml")
    return docs


def need(where, doc, path):
    cur = doc
    for p in path.split("."):
        if not isinstance(cur, dict) or p not in cur or cur[p] in (None, "", [], {}):
            fail(f"{where}: missing {path}")
            return None
        cur = cur[p]
    return cur


def check_kubernetes():
    docs = load_manifests()
    by_kind = {}
    for where, d in docs:
        for f in ("apiVersion", "kind", "metadata.name"):
            need(where, d, f)
        by_kind.setdefault(d.get("kind"), []).append((where, d))
    for kind in ("Deployment", "ConfigMap", "Service", "ServiceMonitor", "PrometheusRule"):
        if len(by_kind.get(kind, [])) != 1:
            fail(f"deploy/kubernetes: expected one {kind}, found {len(by_kind.get(kind, []))}")
    if problems:
        return None
    (dw, dep), = by_kind["Deployment"]
    (cw, cm), = by_kind["ConfigMap"]
    (sw, svc), = by_kind["Service"]
    (mw, smon), = by_kind["ServiceMonitor"]
    fields, defaults = config_fields()

    # Deployment.
    for f in ("spec.selector.matchLabels", "spec.template.metadata.labels", "spec.template.spec.containers"):
        need(dw, dep, f)
    pod = dep["spec"]["template"]
    pod_labels = pod["metadata"]["labels"]
    for k, v in dep["spec"]["selector"]["matchLabels"].items():
        if pod_labels.get(k) != v:
            fail(f"{dw}: selector {k}={v} does not match the pod template's labels")
    spec = pod["spec"]
    if spec.get("enableServiceLinks") is not False:
        fail(f"{dw}: enableServiceLinks must be false (a Service named engaged injects ENGAGED_* variables)")
    containers = {c.get("name"): c for c in spec["containers"]}
    for name, c in containers.items():
        for f in ("name", "image"):
            need(f"{dw} container {name}", c, f)
    if len(containers) < 2:
        fail(f"{dw}: engaged must run beside the application (two containers)")
    eng = containers.get("engaged")
    if eng is None:
        fail(f"{dw}: no container named engaged")
        return None
    version = re.search(r'^version = "([^"]+)"', read("Cargo.toml"), re.M).group(1)
    image = eng.get("image", "")
    if not re.fullmatch(rf"(.+/)?engaged:{re.escape(version)}", image):
        fail(f"{dw}: engaged image {image!r} is not engaged:{version} (Cargo.toml version)")
    args = eng.get("args") or []
    if eng.get("command"):
        fail(f"{dw}: the engaged container should use the image's entrypoint (args only)")
    if not args or args[0] != "run":
        fail(f"{dw}: engaged args must start with the subcommand `run`, not {args[:1]}")
    flags, flags_from = run_flags()
    for a in args[1:]:
        if a.startswith("--"):
            flag = a[2:].split("=", 1)[0]
            if flag not in flags:
                fail(f"{dw}: `{a}` is not a flag of `engaged run` ({flags_from})")
    config_path = None
    if "--config" in args:
        config_path = args[args.index("--config") + 1]
    for e in eng.get("env") or []:
        n = e.get("name", "")
        if n.startswith("ENGAGED_") and n[len("ENGAGED_"):].lower() not in fields:
            fail(f"{dw}: env {n} is not a configuration key (ENGAGED_<KEY>)")

    # Port: default of src/config/mod.rs = containerPort = ConfigMap's listen port.
    default_listen = defaults["listen"]
    default_port = int(default_listen.rsplit(":", 1)[1])
    ports = {p.get("name"): p.get("containerPort") for p in eng.get("ports") or []}
    if default_port not in ports.values():
        fail(f"{dw}: engaged's containerPort {list(ports.values())} is not engaged's default port {default_port} (src/config/mod.rs listen = {default_listen!r})")
    else:
        ok(f"engaged containerPort {default_port} = default listen port of src/config/mod.rs")

    def probe_port(probe):
        p = (probe or {}).get("httpGet", {}).get("port")
        return ports.get(p, p)

    routes = http_routes()
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        pr = eng.get(probe)
        if not pr:
            fail(f"{dw}: engaged has no {probe}")
            continue
        got = pr.get("httpGet", {}).get("path")
        if got != path:
            fail(f"{dw}: {probe} path {got!r}, expected {path}")
        if path not in routes:
            fail(f"src/http/mod.rs serves no route {path}")
        if probe_port(pr) != default_port:
            fail(f"{dw}: {probe} port {pr.get('httpGet', {}).get('port')!r} is not engaged's port {default_port}")
    ok(f"probes: /healthz and /readyz on port {default_port}, both routes of src/http/mod.rs")

    # ConfigMap: mounted at the --config path, keys real.
    mounts = {m["name"]: m["mountPath"] for m in eng.get("volumeMounts") or []}
    volumes = {v["name"]: v for v in spec.get("volumes") or []}
    toml_text = None
    for vname, mpath in mounts.items():
        v = volumes.get(vname, {})
        if v.get("configMap", {}).get("name") == cm["metadata"]["name"] and config_path and config_path.startswith(mpath.rstrip("/") + "/"):
            key = config_path[len(mpath.rstrip("/")) + 1:]
            toml_text = (cm.get("data") or {}).get(key)
            if toml_text is None:
                fail(f"{cw}: no key {key!r} for --config {config_path}")
    if toml_text is None:
        fail(f"{dw}: --config {config_path!r} is not a file of the ConfigMap {cm['metadata']['name']} mounted in the engaged container")
        return None
    try:
        config = tomllib.loads(toml_text)
    except tomllib.TOMLDecodeError as e:
        fail(f"{cw}: engaged.toml does not parse: {e}")
        return None
    unknown = sorted(set(config) - set(fields))
    if unknown:
        fail(f"{cw}: unknown configuration keys {unknown} (engaged would refuse to start; keys: src/config/mod.rs RawConfig)")
    else:
        ok(f"ConfigMap keys {sorted(config)} are all RawConfig fields")
    undocumented = sorted(set(fields) - readme_keys())
    if undocumented:
        # Not a deploy/ problem: the README is behind the code. Said, not failed.
        warnings.append(f"README.md configuration table lacks the keys {undocumented} of src/config/mod.rs")
    listen = config.get("listen", default_listen)
    host, port = listen.rsplit(":", 1)
    if int(port) not in ports.values():
        fail(f"{cw}: listen = {listen!r}, but the container port is {list(ports.values())}")
    if host not in ("0.0.0.0", "[::]"):
        fail(f"{cw}: listen = {listen!r} is not reachable by the kubelet's probes and Prometheus (use 0.0.0.0:{port})")
    shutdown = duration_seconds(config.get("shutdown_timeout", defaults["shutdown_timeout"]))
    grace = spec.get("terminationGracePeriodSeconds")
    if grace is None:
        fail(f"{dw}: terminationGracePeriodSeconds is not set (default 30 is not above shutdown_timeout)")
    elif not grace > shutdown or not grace > duration_seconds(defaults["shutdown_timeout"]):
        fail(f"{dw}: terminationGracePeriodSeconds {grace} is not above shutdown_timeout ({shutdown:.0f}s)")
    else:
        ok(f"terminationGracePeriodSeconds {grace} > shutdown_timeout {shutdown:.0f}s (default {defaults['shutdown_timeout']})")

    # Resources: the sizing rule written in deployment.yaml.
    res = eng.get("resources") or {}
    try:
        req, lim = mib(res["requests"]["memory"]), mib(res["limits"]["memory"])
        budget = config_bytes_mib(config["max_memory"])
        if not req >= 2 * budget + 128:
            fail(f"{dw}: requests.memory {res['requests']['memory']} < 2 x max_memory + 128Mi ({2 * budget + 128:.0f}Mi)")
        if not lim >= req + budget:
            fail(f"{dw}: limits.memory {res['limits']['memory']} < requests + max_memory ({req + budget:.0f}Mi)")
        for k in ("cpu",):
            need(f"{dw} engaged resources", res, f"requests.{k}")
        ok(f"memory: max_memory {budget:.0f}Mi, requests {req:.0f}Mi, limits {lim:.0f}Mi follow the documented sizing")
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        fail(f"{dw}: engaged needs resources.requests/limits.memory and max_memory in the ConfigMap ({e!r})")

    # Service: named engaged (the job label), selects the pod, targets engaged's port.
    if svc["metadata"]["name"] != "engaged":
        fail(f"{sw}: the Service must be named engaged (the alerts' job label)")
    for k, v in (svc.get("spec", {}).get("selector") or {}).items():
        if pod_labels.get(k) != v:
            fail(f"{sw}: selector {k}={v} does not select the Deployment's pods")
    svc_ports = {p.get("name"): p for p in svc.get("spec", {}).get("ports") or []}
    for p in svc_ports.values():
        t = p.get("targetPort")
        if ports.get(t, t) != default_port:
            fail(f"{sw}: port {p.get('name')} targets {t!r}, not engaged's port")

    # ServiceMonitor: selects the Service, scrapes one of its ports at /metrics.
    sel = need(mw, smon, "spec.selector.matchLabels") or {}
    for k, v in sel.items():
        if svc["metadata"].get("labels", {}).get(k) != v:
            fail(f"{mw}: selector {k}={v} does not select the Service {svc['metadata']['name']}")
    for ep in need(mw, smon, "spec.endpoints") or []:
        if ep.get("port") not in svc_ports:
            fail(f"{mw}: endpoint port {ep.get('port')!r} is not a port of the Service")
        if ep.get("path", "/metrics") != "/metrics" or "/metrics" not in routes:
            fail(f"{mw}: endpoint path {ep.get('path')!r} is not engaged's /metrics")
    if smon.get("spec", {}).get("jobLabel"):
        fail(f"{mw}: jobLabel changes the job label away from `engaged`, which the alerts expect")
    ok("Service `engaged` selects the pods; the ServiceMonitor selects the Service and scrapes /metrics")
    return config


# --- Prometheus rules ---------------------------------------------------------------


def rule_docs():
    return {n: yaml.safe_load(read("deploy", "prometheus", n)) for n in ("recording.yml", "alerts.yml")}


def github_anchor(heading):
    a = heading.strip().lower()
    a = re.sub(r"[^\w\- ]", "", a)
    return a.replace(" ", "-")


def check_rules(config):
    docs = rule_docs()
    recorded = {r["record"]: r["expr"] for g in docs["recording.yml"]["groups"] for r in g["rules"]}
    alerts = [r for g in docs["alerts.yml"]["groups"] for r in g["rules"]]
    known = metric_names()
    anchors = {github_anchor(h) for h in re.findall(r"^#+\s+(.+)$", read("docs", "operations.md"), re.M)}
    required = {
        "EngagedDown", "ConsumerLagHigh", "WatermarkStalled", "DeadLetterRateHigh", "CheckpointStale",
        "SnapshotsStale", "ChurnRiskSpike", "ChurnRateHigh", "UnsubscribeRateSpike", "BounceRateSpike",
        "NPSDrop", "ConversionRateDrop",
    }
    names = [a["alert"] for a in alerts]
    missing = sorted(required - set(names))
    if missing:
        fail(f"alerts.yml: missing alerts {missing}")
    for a in alerts:
        n = a["alert"]
        if not a.get("for"):
            fail(f"alerts.yml {n}: no `for:`")
        labels, ann = a.get("labels") or {}, a.get("annotations") or {}
        if labels.get("severity") not in ("critical", "warning"):
            fail(f"alerts.yml {n}: severity must be critical or warning")
        if labels.get("service") != "engaged":
            fail(f"alerts.yml {n}: label service=engaged missing (Alertmanager routes on it)")
        if labels.get("category") not in ("operational", "business"):
            fail(f"alerts.yml {n}: label category must be operational or business")
        for k in ("summary", "description", "runbook_url"):
            if not ann.get(k):
                fail(f"alerts.yml {n}: annotation {k} missing")
        url = ann.get("runbook_url", "")
        m = re.fullmatch(r"docs/operations\.md#([\w-]+)", url)
        if not m:
            fail(f"alerts.yml {n}: runbook_url {url!r} is not docs/operations.md#<anchor>")
        elif m.group(1) not in anchors:
            fail(f"alerts.yml {n}: runbook_url anchor #{m.group(1)} is not a heading of docs/operations.md")
    ok(f"{len(alerts)} alerts with for:, severity/service/category labels and runbooks in docs/operations.md")

    # Windows the alerts read must be configured.
    windows = set(config.get("windows", [])) if config else set()
    if config and "windows" in config:
        names_only = {w.split("/")[0] for w in windows}
        for a in alerts:
            for w in re.findall(r'window="([^"]+)"', a["expr"]):
                if w not in names_only:
                    fail(f"alerts.yml {a['alert']} reads window {w}, not in the ConfigMap's windows {sorted(names_only)}")

    # Metric names exist; recorded names are recorded.
    def names_in(expr):
        return set(re.findall(r"\b(engaged_[a-z0-9_]+)", expr)), set(re.findall(r"\b(engaged:[a-z0-9_:]+)", expr))

    for where, expr in [(f"recording.yml {k}", v) for k, v in recorded.items()] + [(f"alerts.yml {a['alert']}", a["expr"]) for a in alerts]:
        raw, rec = names_in(expr)
        for r in sorted(raw - known):
            fail(f"{where}: metric {r} is not exposed by engaged (src/telemetry/)")
        for r in sorted(rec - set(recorded)):
            fail(f"{where}: {r} is not recorded in recording.yml")
    ok(f"every metric name in the rules is one engaged exposes ({len(known)} known)")

    # Fleet-wide ratios: sums of numerators over sums of denominators, never averages
    # of ratios or of scores.
    per_instance_ratio = re.compile(r"\bengaged_[a-z0-9_]*(_ratio|_avg_seconds|_p50_seconds|_p90_seconds|_average_order_value_minor|_orders_per_customer|_profit_per_customer_minor|survey_nps|survey_csat|survey_ces)(_by_[a-z]+)?\b")
    for k, v in recorded.items():
        if re.search(r"\bavg\s*(by|without|\()", v):
            fail(f"recording.yml {k}: averages across instances; sum numerators and denominators instead")
        m = per_instance_ratio.search(v)
        if m:
            fail(f"recording.yml {k}: reads the per-instance ratio or score {m.group(0)}; sum its numerator and denominator instead")
        if re.search(r"_(ratio|nps|csat|ces|avg_seconds|value_minor|per_customer|per_customer_minor)(_by_[a-z]+)?:sum$", k) and "/" in v:
            if not re.search(r"/\s*\(\s*sum by \([^)]*\) \(engaged_[a-z0-9_]+\)\s*>\s*0\s*\)", v):
                fail(f"recording.yml {k}: a ratio's denominator must be `(sum by (...) (engaged_...) > 0)`")
    ok(f"{len(recorded)} recording rules: ratios are sums over sums with a `> 0` denominator")

    # Every alert has a firing and a silent test case.
    fires, silent = set(), set()
    for name in sorted(os.listdir(PROM)):
        if not name.endswith("_test.yml"):
            continue
        t = yaml.safe_load(read("deploy", "prometheus", name))
        for case in t.get("tests", []):
            for at in case.get("alert_rule_test", []) or []:
                (fires if at.get("exp_alerts") else silent).add(at["alertname"])
    for n in names:
        if n not in fires:
            fail(f"alerts.yml {n}: no promtool test case where it fires")
        if n not in silent:
            fail(f"alerts.yml {n}: no promtool test case where it stays silent")
    ok("every alert has promtool cases that fire and that stay silent")

    # Alertmanager: the inhibition targets the business category, sourced by EngagedDown.
    am = yaml.safe_load(read("deploy", "alertmanager", "alertmanager.yml"))
    inhibit = am.get("inhibit_rules") or []
    if not any('alertname = "EngagedDown"' in " ".join(r.get("source_matchers", [])) and 'category = "business"' in " ".join(r.get("target_matchers", [])) for r in inhibit):
        fail("alertmanager.yml: no inhibition of category=business alerts by EngagedDown")
    routes = am.get("route", {}).get("routes", [])
    if not any(set(r.get("group_by", [])) >= {"alertname", "window"} and 'service = "engaged"' in r.get("matchers", []) for r in routes):
        fail("alertmanager.yml: no route for service=engaged grouped by alertname and window")
    return recorded, known


# --- Grafana ------------------------------------------------------------------------


def check_dashboard(recorded, known):
    try:
        d = json.loads(read("deploy", "grafana", "engaged.json"))
    except (OSError, ValueError) as e:
        fail(f"deploy/grafana/engaged.json: {e}")
        return
    variables = {v["name"]: v for v in d.get("templating", {}).get("list", [])}
    for v in ("window", "site", "channel", "campaign"):
        if v not in variables:
            fail(f"engaged.json: no template variable ${v}")
    for name, v in variables.items():
        if v.get("type") == "query":
            q = v.get("definition", "")
            m = re.search(r",\s*(\w+)\)\s*$", q)
            if m and m.group(1) != name and name in ("window", "site", "channel", "campaign"):
                fail(f"engaged.json: variable ${name} reads label {m.group(1)}, not {name} as on /metrics")
    panels, exprs, ids = 0, 0, set()
    rows = [p["title"] for p in d.get("panels", []) if p.get("type") == "row"]
    for want in ("Overview", "Web", "Email", "Commerce", "Survey", "Customers", "Churn risk"):
        if want not in rows:
            fail(f"engaged.json: no row {want!r}")
    raw_with_rule = {}
    for r in recorded:
        base = "engaged_" + r.split(":")[1]
        raw_with_rule[base] = r
        raw_with_rule[base + "_total"] = r
    for p in d.get("panels", []):
        if p.get("id") in ids:
            fail(f"engaged.json: duplicate panel id {p.get('id')}")
        ids.add(p.get("id"))
        if p.get("type") == "row":
            continue
        panels += 1
        targets = [t for t in p.get("targets") or [] if (t.get("expr") or "").strip()]
        if not targets:
            fail(f"engaged.json: panel {p.get('title')!r} has no target with an expression")
        for t in targets:
            exprs += 1
            e = t["expr"]
            for raw in set(re.findall(r"\b(engaged_[a-z0-9_]+)", e)):
                if raw not in known:
                    fail(f"engaged.json panel {p.get('title')!r}: metric {raw} is not exposed by engaged")
                if raw in raw_with_rule:
                    fail(f"engaged.json panel {p.get('title')!r}: reads {raw}; use the recording rule {raw_with_rule[raw]}")
            for rec in set(re.findall(r"\b(engaged:[a-z0-9_:]+)", e)):
                if rec not in recorded:
                    fail(f"engaged.json panel {p.get('title')!r}: {rec} is not recorded in recording.yml")
    ok(f"dashboard: {panels} panels, {exprs} expressions, each panel with a target; recording rules used where they exist")


def main():
    config = check_kubernetes()
    recorded, known = check_rules(config)
    check_dashboard(recorded, known)
    for p in passed:
        print(f"ok    {p}")
    for w in warnings:
        print(f"WARN  {w}")
    for p in problems:
        print(f"FAIL  {p}")
    if problems:
        print(f"check_deploy.py: {len(problems)} problem(s)")
        return 1
    print(f"check_deploy.py: {len(passed)} checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
