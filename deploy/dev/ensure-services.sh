#!/usr/bin/env bash
# Makes sure the real servers the test suite talks to are running on loopback:
# PostgreSQL on 127.0.0.1:5432 and Redis on 127.0.0.1:6379.
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
log "PostgreSQL and Redis are up"
