#!/usr/bin/env bash
# Installs the Debian packages the tests drive: PostgreSQL 15, the real registry clients, nginx
# (the multi-node tests balance nodes with it) and Chromium (the console's browser tests drive
# it with Playwright: no browser download).
# Idempotent; quiet when everything is already there. Never lets a package start a service.
set -euo pipefail
PACKAGES="postgresql-15 docker.io containerd podman skopeo umoci docker-registry apache2-utils
openssl curl wrk chromium nginx"
missing=()
for p in $PACKAGES; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "installing: ${missing[*]}"
made_policy=0
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && made_policy=1
fi
apt-get -o DPkg::Lock::Timeout=600 update -qq
DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq "${missing[@]}"
[ $made_policy = 1 ] && rm -f /usr/sbin/policy-rc.d
exit 0
