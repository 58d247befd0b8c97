# Sourced by scripts/e2e.sh and scripts/check_deploy.sh (and the checks they run).
#
# apt_install PKG...: installs Debian packages with apt-get, keeping them from starting
# system-wide services on hosts with an init system (Prometheus would listen on
# 0.0.0.0:9090, Alertmanager on 0.0.0.0:9093): a policy-rc.d that exits 101 ("do not
# start") is in place during the install, unless the host already has one. Exits the
# calling script with apt-get's status when the install fails.
apt_install() {
    local sudo="" own_policy="" rc=0
    if [ "$(id -u)" != 0 ]; then sudo="sudo -n"; fi # -n: fail rather than wait for a password
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
        $sudo chmod 755 /usr/sbin/policy-rc.d
        own_policy=1
    fi
    $sudo apt-get update -qq &&
        $sudo env DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -qq --no-install-recommends "$@" >/dev/null ||
        rc=$?
    if [ -n "$own_policy" ]; then $sudo rm -f /usr/sbin/policy-rc.d; fi
    [ "$rc" = 0 ] || { echo "apt-get install $* failed (rc=$rc)" >&2; exit "$rc"; }
}
