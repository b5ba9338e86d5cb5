#!/bin/bash
# nbcloud bootstrap for instance @@NAME@@: makes this machine a Jupyter server reached through SSH.
# Idempotent: `sudo bash /opt/nbcloud/bootstrap.sh` re-runs it and skips what is already in place.
# `bootstrap.sh mount-data` (re)mounts the data volume (nbcloud-data.service runs it at every boot).
# `bootstrap.sh imds-guard` lets only root reach the instance metadata service (nbcloud-imds-guard.service, every
# boot): user-data holds the launch host key, and no process of the login user needs IMDS (the agent runs as root).
# It holds no secret: the token, password hash and TLS key arrive later over SSH, into @@SECRETS@@.
set -Eeuo pipefail
umask 022
@@ENV@@
# NBCLOUD_ROOT prefixes every path written (tests run the steps in a throwaway tree). With NBCLOUD_ROOT_LIVE=1 the
# machine itself runs from that tree (a sandbox instance without root, whose "/" is a directory): the paths inside
# the files written (units, configs, the agent) then name it too.
R="${NBCLOUD_ROOT:-}"
U=@@USER@@
H=@@HOME@@
VOLUME_ID=@@VOLUME@@
PKG_HASH=@@PKG_HASH@@
PKGS=(@@PKGS@@)
HAS_REQUIREMENTS=@@HAS_REQUIREMENTS@@
UNITS=(@@UNITS@@)
VENV=/opt/nbcloud/venv
LOG="$R/var/log/nbcloud/bootstrap.log"
STEP=init
T0=$EPOCHREALTIME
CHANGED=()

mkdir -p "$R/var/log/nbcloud" "$R/var/lib/nbcloud" "$R/opt/nbcloud/etc" "$R/opt/nbcloud/bin"
touch "$LOG" && chmod 0644 "$LOG"

# a unit whose output is appended to the log already (nbcloud-data.service) must not get each line twice
log() {
  local line
  printf -v line '%(%Y-%m-%dT%H:%M:%S%z)T nbcloud-bootstrap: %s' -1 "$*"
  if [[ /dev/stdout -ef $LOG ]]; then printf '%s\n' "$line"; else printf '%s\n' "$line" | tee -a "$LOG"; fi
}
elapsed() { local now=$EPOCHREALTIME; printf '%d.%02d' $(( (${now/[.,]/} - ${1/[.,]/}) / 1000000 )) $(( (${now/[.,]/} - ${1/[.,]/}) / 10000 % 100 )); }
# errexit is off inside functions called from `if`, so failures are caught by this trap instead (set -E).
on_error() { local rc=$?; log "step $STEP failed (exit $rc, line ${BASH_LINENO[0]})"; exit "$rc"; }
trap on_error ERR
fail() { log "$*"; false; }
owned() {  # chown to the login user; a test tree (NBCLOUD_ROOT) may have no such user
  if [ "$(id -u)" = "$(id -u "$U" 2>/dev/null)" ]; then return 0; fi  # run as the login user: ours already
  if id -u "$U" >/dev/null 2>&1; then chown "$U:$U" "$@"; elif [ -z "$R" ]; then fail "no user $U"; fi
}
# stdin to stdout; when the machine runs from $R, nbcloud's paths in it get the prefix (one pass: $R itself may
# lie below $H). perl is in every Debian/Ubuntu base system.
live_paths() {
  if [ "${NBCLOUD_ROOT_LIVE:-0}" = 1 ] && [ -n "$R" ]; then
    NB_R="$R" NB_H="$H" perl -pe 's{(?<![\w./-])(/opt/nbcloud|/var/lib/nbcloud|/var/log/nbcloud|\Q$ENV{NB_H}\E)(?![\w.-])}{$ENV{NB_R}$1}g'
  else
    cat
  fi
}
# put PATH MODE < content: replace only when different, so a re-run changes nothing and we know what changed
put() {
  local dst="$R$1" mode=$2
  mkdir -p "$(dirname "$dst")"
  live_paths > "$dst.nbcloud-new"
  if cmp -s "$dst.nbcloud-new" "$dst"; then rm -f "$dst.nbcloud-new"; return 0; fi
  chmod "$mode" "$dst.nbcloud-new" && mv -f "$dst.nbcloud-new" "$dst"
  CHANGED+=("$1")
}

step_python() {
  PY="${NBCLOUD_PYTHON:-/usr/bin/python3}"
  # uv-managed Pythons go where the login user can read them (root's home is 0700)
  export UV_PYTHON_INSTALL_DIR="$R/opt/nbcloud/python"
  if [ ! -x "$PY" ]; then
    [ "${NBCLOUD_NO_INDEX:-0}" = 1 ] && fail "no Python at $PY"
    PY=3.12  # no system Python: uv fetches one
  fi
  if [ -n "${NBCLOUD_UV:-}" ]; then UV=$NBCLOUD_UV
  elif [ -x "$R/opt/nbcloud/bin/uv" ]; then UV=$R/opt/nbcloud/bin/uv
  elif command -v uv >/dev/null 2>&1; then UV=$(command -v uv)
  else
    [ "${NBCLOUD_NO_INDEX:-0}" = 1 ] && fail "no uv and no index to fetch it from"
    curl -LsSf https://astral.sh/uv/install.sh | env UV_INSTALL_DIR="$R/opt/nbcloud/bin" UV_NO_MODIFY_PATH=1 sh
    UV=$R/opt/nbcloud/bin/uv
  fi
  [ -x "$UV" ] || fail "uv not executable at $UV"
  log "step python: python $PY, $("$UV" --version)"
}

conda_kernels() {
  # Deep-learning images ship conda envs: offer each that has ipykernel as a kernel of this server.
  [ -x /opt/conda/bin/conda ] || return 0
  local env name dir
  for env in $(/opt/conda/bin/conda env list --json | "$R$VENV/bin/python" -c \
      'import json,sys; print("\n".join(json.load(sys.stdin).get("envs", [])))'); do
    [ -x "$env/bin/python" ] && "$env/bin/python" -c 'import ipykernel' >/dev/null 2>&1 || continue
    name=$(basename "$env"); [ "$env" = /opt/conda ] && name=base
    dir="$R$VENV/share/jupyter/kernels/conda-$name"
    mkdir -p "$dir"
    printf '{"argv": ["%s", "-m", "ipykernel_launcher", "-f", "{connection_file}"], "display_name": "Python (conda %s)", "language": "python"}\n' \
      "$env/bin/python" "$name" > "$dir/kernel.json"
    log "step venv: conda env $name registered as a kernel"
  done
}

step_venv() {
  local marker="$R$VENV/.nbcloud-packages"
@@REQUIREMENTS@@  if [ -x "$R$VENV/bin/jupyter-lab" ] && [ "$(cat "$marker" 2>/dev/null)" = "$PKG_HASH" ]; then
    if [ -e "$R/var/lib/nbcloud/baked" ] || [ ! -e "$R/var/lib/nbcloud/bootstrap.done" ]; then
      log "step venv: already installed (baked image)"
    else
      log "step venv: already installed"
    fi
    return 0
  fi
  [ -x "$R$VENV/bin/python" ] || "$UV" venv -q "$R$VENV" -p "$PY"
  local args=(pip install -q -p "$R$VENV")
  if [ "${NBCLOUD_NO_INDEX:-0}" = 1 ]; then args+=(--no-index --find-links "$NBCLOUD_FIND_LINKS"); fi
  [ "$HAS_REQUIREMENTS" = 1 ] && args+=(-r "$R/opt/nbcloud/etc/requirements.txt")
  "$UV" "${args[@]}" "${PKGS[@]}"
  conda_kernels
  printf '%s\n' "$PKG_HASH" > "$marker"
  log "step venv: installed ${#PKGS[@]} packages$([ "$HAS_REQUIREMENTS" = 1 ] && echo ' + requirements.txt')"
}

mount_data() {
  local target="$R$H/data" dev="" deadline=$((SECONDS + 120)) vol
  mkdir -p "$target"
  if [ -z "$VOLUME_ID" ]; then owned "$target"; return 0; fi
  if mountpoint -q "$target"; then log "data: $VOLUME_ID already mounted"; return 0; fi
  vol=${VOLUME_ID/-/}
  while :; do
    # EC2 (and the sandbox's os mode: a loop device under the same names) gives a block device. Only the sandbox's
    # default netns mode, whose instances share the host's /dev, has none: it lends a mounted directory instead
    if mountpoint -q "/mnt/sandbox-volumes/$VOLUME_ID" 2>/dev/null; then
      mount --bind "/mnt/sandbox-volumes/$VOLUME_ID" "$target"
      break
    fi
    for d in "/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_$vol" /dev/sdf /dev/xvdf; do
      [ -b "$d" ] && { dev=$(readlink -f "$d"); break; }
    done
    [ -n "$dev" ] && break
    [ "$SECONDS" -ge "$deadline" ] && fail "volume $VOLUME_ID not attached after 120 s"
    sleep 0.2  # a hot-attached device shows up within a second or two: mount it soon after
  done
  if [ -n "$dev" ]; then
    # mkfs only when blkid positively reports "no filesystem" (exit 2): any other doubt must not wipe data
    local rc=0
    blkid -p "$dev" >/dev/null 2>&1 || rc=$?
    if [ "$rc" = 2 ]; then log "data: formatting new volume $dev"; mkfs.ext4 -q -L nbcloud-data "$dev"
    elif [ "$rc" != 0 ]; then fail "blkid $dev failed (exit $rc)"; fi
    mount -o defaults,nofail "$dev" "$target"
  fi
  owned "$target"
  log "data: $VOLUME_ID mounted at $H/data"
}

step_data() { mount_data; }

# Non-root processes may not reach 169.254.169.254 (user-data, role credentials). nftables where present, else
# iptables; rejected rather than dropped so a blocked tool fails at once instead of hanging. Skipped where the
# machine is not ours to firewall: a test tree, or a sandbox instance without root (its "network" is the host's).
guard_imds() {
  if [ -n "$R" ] || [ "${NBCLOUD_ROOT_LIVE:-0}" = 1 ] || [ "$(id -u)" != 0 ]; then
    log "imds guard: skipped (no root or no network of its own): user processes can read IMDS"; return 0
  fi
  if command -v nft >/dev/null 2>&1; then
    nft delete table inet nbcloud_imds >/dev/null 2>&1 || true
    nft -f - <<'NFT'
table inet nbcloud_imds {
  chain output {
    type filter hook output priority 0; policy accept;
    meta skuid != 0 ip daddr 169.254.169.254 meta l4proto tcp reject with tcp reset
    meta skuid != 0 ip daddr 169.254.169.254 reject
  }
}
NFT
  elif command -v iptables >/dev/null 2>&1; then
    iptables -C OUTPUT -d 169.254.169.254 -m owner ! --uid-owner 0 -j REJECT 2>/dev/null \
      || iptables -I OUTPUT -d 169.254.169.254 -m owner ! --uid-owner 0 -j REJECT
  else
    log "imds guard: neither nft nor iptables found: user processes can read IMDS"; return 0
  fi
  log "imds guard: only root reaches 169.254.169.254"
}

step_config() {
  mkdir -p "$R/opt/nbcloud/agent" "$R/var/lib/nbcloud"
  install -d -m 0755 "$R$H/.config" && owned "$R$H/.config"
  install -d -m 0700 "$R@@SECRETS@@" && owned "$R@@SECRETS@@"
  for f in jupyter.log agent.log gateway.log; do touch "$R/var/log/nbcloud/$f"; chmod 0644 "$R/var/log/nbcloud/$f"; done
  if [ ! -e "$R@@SECRETS@@/agent.json" ]; then  # later changed by `nbcloud autostop`: never overwrite
    (umask 077; printf '%s\n' @@AGENT_SETTINGS@@ > "$R@@SECRETS@@/agent.json")
    owned "$R@@SECRETS@@/agent.json"
  fi
@@FILES@@
  log "step config: ${#CHANGED[@]} file(s) changed"
}

step_services() {
@@UNIT_FILES@@
  local reload=0 restart_jupyter=0 f
  for f in "${CHANGED[@]}"; do
    case "$f" in /etc/systemd/system/*) reload=1;; /opt/nbcloud/etc/jupyter_server_config.py) restart_jupyter=1;; esac
  done
  [ "$reload" = 1 ] && systemctl daemon-reload
  # --no-block: Jupyter's start waits for the token, which the client sends only after this script is done
  systemctl enable --now --no-block "${UNITS[@]}"
  [ "$restart_jupyter" = 1 ] && [ -e "$R/var/lib/nbcloud/bootstrap.done" ] && systemctl restart --no-block nbcloud-jupyter.service
  log "step services: ${UNITS[*]} enabled"
}

compile_later() {
  # Jupyter and every kernel import from this venv as the login user, who cannot write its __pycache__ (root owns
  # the venv): without byte-code each start compiles what it imports from source (a kernel ~0.4 s more, Jupyter
  # ~1.5 s, measured). Once per package set, after Jupyter was started, at the lowest CPU and I/O priority, so the
  # first `up` does not wait for it. NBCLOUD_COMPILE_BYTECODE=0 skips it (the sandbox's instances share one CPU).
  [ "${NBCLOUD_COMPILE_BYTECODE:-1}" = 1 ] || return 0
  local marker="$R$VENV/.nbcloud-compiled"
  [ "$(cat "$marker" 2>/dev/null)" = "$PKG_HASH" ] && return 0
  local cmd idle=()
  printf -v cmd '%q -m compileall -q -j 0 %q >/dev/null 2>&1; echo %q > %q' \
    "$R$VENV/bin/python" "$R$VENV/lib" "$PKG_HASH" "$marker"
  command -v ionice >/dev/null 2>&1 && idle=(ionice -c 3)
  # its own session: it outlives this script (cloud-init's final stage, or ssh) and nothing waits for it
  setsid nice -n 19 "${idle[@]}" /bin/sh -c "$cmd" </dev/null >/dev/null 2>&1 &
  log "byte-compiling the venv in the background"
}

run() {
  local t=$EPOCHREALTIME
  STEP=$1
  log "step $1: start"
  # the step's errors (pip's, uv's, apt's) go to the log too: the client shows the cause from there
  "step_$1" 2> >(tee -a "$LOG" >&2)
  log "step $1: ok ($(elapsed "$t") s)"
}

# cloud-init runs this script in its final stage, after two more cloud-init processes (the config and final
# stages) have started and imported: ~0.7 s after the network stage on the sandbox's real-OS instances. Its bootcmd
# (the network stage, once per instance) runs `early` instead, which starts the bootstrap as its own unit as soon as
# that stage is done; the final stage's run then only waits for it and takes its result, so `cloud-init status`
# still says whether the bootstrap worked.
EARLY_MARK=/run/nbcloud-bootstrap.early
EARLY_STATUS=/run/nbcloud-bootstrap.status
start_early() {
  [ -z "$R" ] && command -v systemd-run >/dev/null 2>&1 || return 0
  touch "$EARLY_MARK"
  # KillMode=process: the background byte-compile (compile_later) outlives the run, as under cloud-final
  # the network stage's unit: cloud-init.service, cloud-init-network.service from cloud-init 24.3 (Ubuntu 24.04's)
  systemd-run --no-block --quiet --unit=nbcloud-bootstrap \
    --property="After=cloud-init.service cloud-init-network.service" \
    --property=KillMode=process /bin/bash "$(readlink -f "$0")" run-early || rm -f "$EARLY_MARK"
}
wait_early() {
  local state load
  while [ ! -e "$EARLY_STATUS" ]; do
    state=$(systemctl show -P ActiveState nbcloud-bootstrap.service 2>/dev/null || true)
    load=$(systemctl show -P LoadState nbcloud-bootstrap.service 2>/dev/null || true)
    # the unit may end (and, transient, be unloaded) between the test above and these reads: its status file is
    # written before it exits, so look again before deciding it never ran (it ran the steps twice when it didn't)
    [ -e "$EARLY_STATUS" ] && break
    if [ "$state" = failed ]; then rm -f "$EARLY_MARK"; return 1; fi  # killed before it wrote its status
    if [ "$load" = not-found ]; then rm -f "$EARLY_MARK"; return 2; fi  # the unit never ran: run here after all
    sleep 0.2
  done
  rm -f "$EARLY_MARK"  # consumed: a later `sudo bash /opt/nbcloud/bootstrap.sh` runs the steps again
  return "$(cat "$EARLY_STATUS")"
}

case "${1:-all}" in
  mount-data) STEP=data; mount_data; exit 0;;
  imds-guard) STEP=imds; guard_imds; exit 0;;
  early) start_early; exit 0;;
  run-early) rm -f "$EARLY_STATUS"; trap 'echo $? > "$EARLY_STATUS"' EXIT;;
  all)
    if [ -z "$R" ] && [ -e "$EARLY_MARK" ]; then
      rc=0; wait_early || rc=$?
      [ "$rc" = 2 ] || exit "$rc"
    fi;;
  *) echo "usage: $0 [all|mount-data|imds-guard|early]" >&2; exit 2;;
esac

log "start (instance @@NAME@@)"
SELF="${BASH_SOURCE[0]}"
if [ -f "$SELF" ] && [ "$(readlink -f "$SELF")" != "$(readlink -f "$R/opt/nbcloud/bootstrap.sh" 2>/dev/null)" ]; then
  install -D -m 0700 "$SELF" "$R/opt/nbcloud/bootstrap.sh"
fi
for s in ${NBCLOUD_STEPS:-python venv data config services}; do run "$s"; done
compile_later
STEP=done
date -u +%FT%TZ > "$R/var/lib/nbcloud/bootstrap.done"
log "done in $(elapsed "$T0") s"
