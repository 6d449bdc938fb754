#!/usr/bin/env bash
# Installs the Debian packages the tests drive: PostgreSQL 15, the real registry clients, nginx
# (the multi-node tests balance nodes with it) and HAProxy (docs/deployment.md's examples run in
# front of a node), Chromium (the console's browser tests drive
# it with Playwright: no browser download) and Ceph's monitor, OSD and RADOS Gateway (the S3
# tests' second store, tests/rgw.py; without their recommends, which would add the manager,
# the MDS and ~50 Python packages).
# Idempotent; quiet when everything is already there. Never lets a package start a service.
set -euo pipefail
PACKAGES="postgresql-15 docker.io containerd podman skopeo umoci docker-registry apache2-utils sqlite3
openssl curl wrk chromium nginx haproxy xfsprogs"
BARE_PACKAGES="ceph-mon ceph-osd radosgw"
missing=() missing_bare=()
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }
for p in $PACKAGES; do installed "$p" || missing+=("$p"); done
for p in $BARE_PACKAGES; do installed "$p" || missing_bare+=("$p"); done
[ ${#missing[@]} -eq 0 ] && [ ${#missing_bare[@]} -eq 0 ] && exit 0
echo "installing: ${missing[*]} ${missing_bare[*]}"
made_policy=0
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && made_policy=1
fi
apt-get -o DPkg::Lock::Timeout=600 update -qq
install() { DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq "$@"; }
[ ${#missing[@]} -eq 0 ] || install "${missing[@]}"
[ ${#missing_bare[@]} -eq 0 ] || install --no-install-recommends "${missing_bare[@]}"
[ $made_policy = 1 ] && rm -f /usr/sbin/policy-rc.d
exit 0
