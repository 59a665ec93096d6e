#!/usr/bin/env bash
# Prepare this machine to run compose.yaml with podman (see docs/deployment.md): podman-stack's setup
# (podman, docker-compose, stand-ins for the registry images) plus two packages the stack needs that the
# setup leaves out: the CNI dnsname plugin (services find each other by name) and catatonit (`init: true`).
# Idempotent: seconds once done. Run as root from anywhere.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
stack=${PODMAN_STACK:-$root/../shared/tools/podman-stack/podman-stack}
[[ -x $stack ]] || { echo "prepare-host: no podman-stack at $stack (set PODMAN_STACK)" >&2; exit 1; }
"$stack" setup "$root/compose.yaml"
need=()
[[ -x /usr/lib/cni/dnsname ]] || need+=(golang-github-containernetworking-plugin-dnsname)
[[ -x /usr/libexec/podman/catatonit ]] || need+=(catatonit)
if ((${#need[@]})); then
  echo "prepare-host: installing ${need[*]}" >&2
  for _ in $(seq 60); do  # another apt may hold the lock for a while
    if DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null 2>&1; then
      need=(); break
    fi
    apt-get update -qq >/dev/null 2>&1 || true
    sleep 5
  done
  ((${#need[@]} == 0)) || { echo "prepare-host: could not install ${need[*]}" >&2; exit 1; }
fi
