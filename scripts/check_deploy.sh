#!/usr/bin/env bash
# Checks everything under deploy/ with the real tools, without a cluster:
#   promtool check/test rules on every rule and test file, promtool check config;
#   amtool check-config and routing of engaged's alerts;
#   the PrometheusRule and the Grafana dashboard equal what their generators write;
#   the Kubernetes manifests against the Kubernetes schemas (kubernetes-validate, the
#   offline validator PyPI has: kubeconform is not installable here) and, when kubectl
#   is present, `kubectl kustomize`;
#   scripts/check_deploy.py: manifests, rules and dashboard against engaged's sources.
#
# Installs what it needs (idempotent): prometheus and prometheus-alertmanager (apt,
# without starting their services), PyYAML and kubernetes-validate (pip). Nothing listens
# on any port. Run by scripts/e2e.sh; run it before committing changes to deploy/.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
started=$SECONDS

log() { printf '==> %s\n' "$*" >&2; }


# --- promtool, amtool (Debian packages) -------------------------------------------------
. scripts/apt.sh
need_pkgs=()
command -v promtool >/dev/null && command -v prometheus >/dev/null || need_pkgs+=(prometheus)
command -v amtool >/dev/null || need_pkgs+=(prometheus-alertmanager)
if [ "${#need_pkgs[@]}" -gt 0 ]; then
    log "installing ${need_pkgs[*]} (apt)"
    apt_install "${need_pkgs[@]}"
fi

# --- PyYAML and kubernetes-validate (PyPI) ---------------------------------------------
. scripts/pip_pinned.sh
pip_ensure 'import yaml, kubernetes_validate' "manifest checks" pyyaml kubernetes-validate

TMP="$(mktemp -d "${TMPDIR:-/tmp}/engaged-check-deploy.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT

# --- Prometheus rules ---------------------------------------------------------------
log "promtool: rules, unit tests and configuration of deploy/prometheus"
promtool check rules deploy/prometheus/recording.yml deploy/prometheus/alerts.yml
promtool check config deploy/prometheus/prometheus.yml
(cd deploy/prometheus && for t in *_test.yml; do promtool test rules "$t"; done)

log "the PrometheusRule equals the rule files; a tuned copy still loads"
python3 scripts/gen_prometheus_rule.py --check
python3 scripts/gen_prometheus_rule.py tune --out "$TMP/tuned" --for ChurnRiskSpike=15s \
    --expr 'engaged:churn_risk_crossings:baseline=avg_over_time(engaged:churn_risk_crossings:sum[10m] offset 1m)' >/dev/null
promtool check rules "$TMP/tuned/recording.yml" "$TMP/tuned/alerts.yml"
python3 - "$TMP/prometheusrule-groups.yml" <<'EOF'
import sys, yaml
doc = yaml.safe_load(open("deploy/kubernetes/prometheusrule.yaml"))
yaml.safe_dump({"groups": doc["spec"]["groups"]}, open(sys.argv[1], "w"), sort_keys=False)
EOF
promtool check rules "$TMP/prometheusrule-groups.yml"

# --- Alertmanager -------------------------------------------------------------------
log "amtool: deploy/alertmanager/alertmanager.yml"
AM=deploy/alertmanager/alertmanager.yml
amtool check-config "$AM"
route() {  # route LABELS... -> the receiver amtool picks (must be engaged-webhook)
    amtool config routes test --config.file="$AM" --verify.receivers=engaged-webhook "$@" 2>/dev/null >/dev/null ||
        { echo "amtool: $* is not routed to engaged-webhook" >&2; exit 1; }
}
route service=engaged alertname=ChurnRiskSpike category=business severity=critical job=engaged window=24h
route service=engaged alertname=ConsumerLagHigh category=operational severity=warning job=engaged instance=a:9898
[ "$(amtool config routes test --config.file="$AM" alertname=SomethingElse 2>/dev/null)" = "null" ] ||
    { echo "amtool: an alert that is not engaged's reaches the engaged receiver" >&2; exit 1; }

# --- Grafana ------------------------------------------------------------------------
log "the dashboard equals scripts/gen_dashboard.py's"
python3 scripts/gen_dashboard.py --check

# --- Kubernetes ---------------------------------------------------------------------
log "kubernetes-validate --strict: deploy/kubernetes (CRDs are checked by check_deploy.py)"
python3 -m kubernetes_validate --strict --quiet \
    deploy/kubernetes/configmap.yaml deploy/kubernetes/deployment.yaml deploy/kubernetes/service.yaml
if command -v kubectl >/dev/null; then
    log "kubectl kustomize deploy/kubernetes"
    kubectl kustomize deploy/kubernetes >"$TMP/kustomized.yaml"
    python3 -m kubernetes_validate --strict --quiet --no-warn "$TMP/kustomized.yaml"
else
    log "kubectl not installed: kustomization checked by check_deploy.py only"
fi

# --- Consistency with engaged's sources ---------------------------------------------------
log "scripts/check_deploy.py: manifests, rules and dashboard against engaged's sources"
python3 scripts/check_deploy.py

log "deploy checks passed in $((SECONDS - started))s"
