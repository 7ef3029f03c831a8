#!/usr/bin/env bash
# Makes sure the real servers the test suite talks to are running on loopback:
# PostgreSQL on 127.0.0.1:5432 and Redis on 127.0.0.1:6379; and that dovecot is installed (not running).
# Also installs what the web inbox tests drive: Debian's chromium (run headless by Playwright, whose own
# browser downloads are unreachable) and Node.js with npm (the test OpenID provider, tests/oidc); and the
# libraries WeasyPrint prints the action plan with (Pango, HarfBuzz) and a font with Danish letters.
# Started where installed but stopped; installed with apt-get where missing (needs root).
set -euo pipefail

log() { printf 'ensure-services: %s\n' "$*" >&2; }

apt_updated=0
apt_install() {
    if [ "$(id -u)" -ne 0 ]; then
        log "need $* but not root: install it and run again"; exit 1
    fi
    if [ "$apt_updated" -eq 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq; apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

wait_for() {  # wait_for DESCRIPTION COMMAND...
    local what=$1; shift
    for _ in $(seq 1 60); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.5
    done
    log "$what did not come up"; exit 1
}

# PostgreSQL
if ! command -v pg_ctlcluster >/dev/null 2>&1; then
    log "installing postgresql"; apt_install postgresql postgresql-client
fi
if ! pg_isready -q -h 127.0.0.1 -p 5432; then
    version=$(ls /etc/postgresql | sort -n | tail -n 1)
    if [ -z "$version" ]; then log "no PostgreSQL cluster found"; exit 1; fi
    log "starting PostgreSQL $version"
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    wait_for PostgreSQL pg_isready -q -h 127.0.0.1 -p 5432
fi

# Redis: the tests also start private redis-server processes to kill them.
if ! command -v redis-server >/dev/null 2>&1; then
    log "installing redis-server"; apt_install redis-server redis-tools
fi
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
    log "starting Redis"
    mkdir -p /var/lib/redis /var/log/redis
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
        --dir /var/lib/redis --logfile /var/log/redis/ci.log
    wait_for Redis redis-cli -h 127.0.0.1 -p 6379 ping
fi
# Dovecot: the IMAP tests run throwaway dovecot processes of their own (tests/dovecot.py) on free loopback
# ports; the system's service is neither needed nor started. A policy-rc.d that answers 101 keeps the
# package's scripts from starting it (one that is already there is left as it is).
if ! command -v dovecot >/dev/null 2>&1 && [ ! -x /usr/sbin/dovecot ]; then
    log "installing dovecot-imapd (without starting its service)"
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    apt_install dovecot-imapd
    if command -v systemctl >/dev/null 2>&1; then
        systemctl disable --now dovecot.service dovecot.socket >/dev/null 2>&1 || true
    fi
fi
# Chromium: the browser tests (tests/browser.py) launch /usr/bin/chromium headless; never `playwright install`.
if [ ! -x /usr/bin/chromium ]; then
    log "installing chromium"; apt_install chromium
fi
# Node.js and npm: the OpenID Connect tests run a real provider (tests/oidc/provider.js, oidc-provider).
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    log "installing nodejs and npm"; apt_install nodejs npm
fi
# WeasyPrint (postkasse/pathway/printed.py, the printed action plan) loads Pango and HarfBuzz through cffi and
# needs a font with æ, ø and å; pip cannot install them.
weasyprint_missing=()
for package in libpango-1.0-0 libpangoft2-1.0-0 libharfbuzz0b libharfbuzz-subset0 fonts-dejavu-core; do
    if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'ok installed'; then
        weasyprint_missing+=("$package")
    fi
done
if [ "${#weasyprint_missing[@]}" -gt 0 ]; then
    log "installing ${weasyprint_missing[*]} for WeasyPrint"; apt_install "${weasyprint_missing[@]}"
fi
log "PostgreSQL and Redis are up; dovecot, chromium, node and Pango are installed for the tests that use them"
