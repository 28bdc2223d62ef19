#!/usr/bin/env bash
# deploy/deploy.sh: install a release of mmops, back up and upgrade the database, restart the
# service, wait until it is ready, and roll the code back if it does not come up.
#
# Layout under the install root (--root, default /opt/mmops):
#   releases/<UTC time>/.venv      one virtualenv per release, mmops installed from --src
#   releases/<UTC time>/RELEASE    what was installed: source, git commit, time, versions
#   releases/<UTC time>/FAILED     written when the release never became ready
#   current -> releases/<UTC time> the release the service runs (the unit's ExecStart is
#                                  /opt/mmops/current/.venv/bin/mmops serve)
#
# Steps: build the release (nothing else is touched if that fails) → `mmops db status` with the
# new code (settings and PostgreSQL answer) → `mmops db backup` → `mmops db upgrade` → point
# `current` at the new release → restart → wait for the ready URL to answer 200 → prune old
# releases. If the service is not ready in time, `current` goes back to the previous release,
# the service is restarted again and the script exits 3. The schema is never downgraded
# automatically (a rollback can drop data): migrations are additive, so the previous code runs
# on the upgraded schema; the backup taken before the upgrade is named in every message.
#
# Exit codes: 0 deployed and ready; 1 failed before the switch (the running release is
# untouched); 2 usage or configuration error; 3 not ready, rolled back, the previous release is
# ready; 4 not ready and no working rollback: the service is down, act now.
#
# Documentation: docs/OPERATIONAL_SERVICES.md ("Deployment"), docs/TROUBLESHOOTING.md.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: deploy/deploy.sh [options]

Install mmops from a source directory as a new release, back up and upgrade the database,
restart the service and wait until it is ready; roll the code back if it is not.

Options (each also settable by the environment variable shown):
  --src DIR             source directory to install      MMOPS_DEPLOY_SRC (this script's repository)
  --root DIR            install root                     MMOPS_DEPLOY_ROOT (/opt/mmops)
  --env-file FILE       the service's environment file   MMOPS_DEPLOY_ENV_FILE (/etc/mmops/mmops.env)
  --backup-dir DIR      where `mmops db backup` writes   MMOPS_DEPLOY_BACKUP_DIR (/var/lib/mmops/backups)
  --restart-cmd CMD     restarts the service (bash -c)   MMOPS_DEPLOY_RESTART_CMD (systemctl restart mmops)
  --restart-timeout S   longest the restart may take     MMOPS_DEPLOY_RESTART_TIMEOUT (120)
  --ready-url URL       must answer 200 when ready       MMOPS_DEPLOY_READY_URL
                        (default: http://MMOPS_HTTP_HOST:MMOPS_HTTP_PORT/readyz from the env file)
  --ready-timeout S     longest wait for the ready URL   MMOPS_DEPLOY_READY_TIMEOUT (60)
  --ready-interval S    pause between two checks         MMOPS_DEPLOY_READY_INTERVAL (2)
  --python PY           interpreter for the virtualenv   MMOPS_DEPLOY_PYTHON (python3)
  --venv-args ARGS      extra `python -m venv` arguments MMOPS_DEPLOY_VENV_ARGS
  --pip-args ARGS       extra `pip install` arguments    MMOPS_DEPLOY_PIP_ARGS
                        (e.g. "--no-index --find-links /srv/wheels" for an offline host)
  --keep N              releases kept after a success    MMOPS_DEPLOY_KEEP (5)
  --dry-run             print every step, change nothing MMOPS_DEPLOY_DRY_RUN=true
  -h, --help            this text

Exit codes: 0 deployed and ready; 1 failed before the switch (nothing changed but possibly the
schema); 2 usage or configuration; 3 not ready, rolled back to the previous release, which is
ready; 4 not ready and no working rollback (the service is down).
EOF
}

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

SRC="${MMOPS_DEPLOY_SRC:-$(dirname "$SCRIPT_DIR")}"
ROOT="${MMOPS_DEPLOY_ROOT:-/opt/mmops}"
ENV_FILE="${MMOPS_DEPLOY_ENV_FILE:-/etc/mmops/mmops.env}"
BACKUP_DIR="${MMOPS_DEPLOY_BACKUP_DIR:-/var/lib/mmops/backups}"
RESTART_CMD="${MMOPS_DEPLOY_RESTART_CMD:-systemctl restart mmops}"
RESTART_TIMEOUT="${MMOPS_DEPLOY_RESTART_TIMEOUT:-120}"
READY_URL="${MMOPS_DEPLOY_READY_URL:-}"
READY_TIMEOUT="${MMOPS_DEPLOY_READY_TIMEOUT:-60}"
READY_INTERVAL="${MMOPS_DEPLOY_READY_INTERVAL:-2}"
PYTHON="${MMOPS_DEPLOY_PYTHON:-python3}"
VENV_ARGS="${MMOPS_DEPLOY_VENV_ARGS:-}"
PIP_ARGS="${MMOPS_DEPLOY_PIP_ARGS:-}"
KEEP="${MMOPS_DEPLOY_KEEP:-5}"
DRY_RUN="${MMOPS_DEPLOY_DRY_RUN:-false}"

STEP="start"
REPORTED=""
BUILD_DIR=""
UNUSED_RELEASE=""  # a release not switched to yet: removed if the deploy stops before the switch

# --- output -------------------------------------------------------------------------------

say() { printf 'deploy: %s\n' "$*"; }
warn() { printf 'deploy: %s\n' "$*" >&2; }
step() {
  STEP="$*"
  printf '\n==> %s\n' "$*"
}
die() {  # die CODE MESSAGE...
  local code="$1"
  shift
  REPORTED=1
  printf 'deploy: error: %s\n' "$*" >&2
  exit "$code"
}
finish() {  # finish CODE: an exit whose message has been printed already
  REPORTED=1
  exit "$1"
}
# shellcheck disable=SC2317  # called by the EXIT trap, which shellcheck 0.9 does not follow
# shellcheck disable=SC2329  # invoked by the EXIT trap below
on_exit() {
  local rc=$?
  if [[ -n "$BUILD_DIR" ]]; then
    rm -rf -- "$BUILD_DIR"
  fi
  if ((rc != 0)) && [[ -n "$UNUSED_RELEASE" ]]; then
    rm -rf -- "$UNUSED_RELEASE"
  fi
  if ((rc != 0)) && [[ -z "$REPORTED" ]]; then
    printf 'deploy: error: stopped unexpectedly (exit %s) during: %s\n' "$rc" "$STEP" >&2
  fi
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

dry() { [[ "$DRY_RUN" == true ]]; }

# show CMD...: print a command as it runs (or would run).
show() {
  printf '  +'
  printf ' %q' "$@"
  printf '\n'
}

# run CMD...: print the command, then run it (only print it in a dry run).
run() {
  show "$@"
  if dry; then
    return 0
  fi
  "$@"
}

# --- arguments ----------------------------------------------------------------------------

parse_args() {
  while (($# > 0)); do
    local opt="$1" value=""
    case "$opt" in
      -h | --help)
        usage
        finish 0
        ;;
      --dry-run)
        DRY_RUN=true
        shift
        continue
        ;;
      --src* | --root* | --env-file* | --backup-dir* | --restart-cmd* | --restart-timeout* | \
        --ready-url* | --ready-timeout* | --ready-interval* | --python* | --venv-args* | \
        --pip-args* | --keep*) ;;
      *) die 2 "unknown argument: $opt (see --help)" ;;
    esac
    if [[ "$opt" == *=* ]]; then
      value="${opt#*=}"
      opt="${opt%%=*}"
      shift
    else
      (($# >= 2)) || die 2 "$opt needs a value (see --help)"
      value="$2"
      shift 2
    fi
    case "$opt" in
      --src) SRC="$value" ;;
      --root) ROOT="$value" ;;
      --env-file) ENV_FILE="$value" ;;
      --backup-dir) BACKUP_DIR="$value" ;;
      --restart-cmd) RESTART_CMD="$value" ;;
      --restart-timeout) RESTART_TIMEOUT="$value" ;;
      --ready-url) READY_URL="$value" ;;
      --ready-timeout) READY_TIMEOUT="$value" ;;
      --ready-interval) READY_INTERVAL="$value" ;;
      --python) PYTHON="$value" ;;
      --venv-args) VENV_ARGS="$value" ;;
      --pip-args) PIP_ARGS="$value" ;;
      --keep) KEEP="$value" ;;
      *) die 2 "unknown option: $opt (see --help)" ;;
    esac
  done
}

check_args() {
  [[ "$DRY_RUN" == true || "$DRY_RUN" == false ]] ||
    die 2 "MMOPS_DEPLOY_DRY_RUN must be true or false, got '$DRY_RUN'"
  [[ "$READY_TIMEOUT" =~ ^[0-9]+$ ]] || die 2 "--ready-timeout: whole seconds, got '$READY_TIMEOUT'"
  [[ "$RESTART_TIMEOUT" =~ ^[1-9][0-9]*$ ]] ||
    die 2 "--restart-timeout: whole seconds above 0, got '$RESTART_TIMEOUT'"
  [[ "$READY_INTERVAL" =~ ^[0-9]+(\.[0-9]+)?$ ]] ||
    die 2 "--ready-interval: seconds, got '$READY_INTERVAL'"
  [[ "$KEEP" =~ ^[1-9][0-9]*$ ]] || die 2 "--keep: a number of releases above 0, got '$KEEP'"
  [[ -f "$SRC/pyproject.toml" ]] || die 2 "--src: no pyproject.toml in '$SRC'"
  SRC="$(cd "$SRC" && pwd)"
  command -v "$PYTHON" >/dev/null || die 2 "--python: '$PYTHON' not found"
  [[ -n "$RESTART_CMD" ]] || die 2 "--restart-cmd is empty"
  if [[ -e "$ROOT/current" && ! -L "$ROOT/current" ]]; then
    die 2 "$ROOT/current exists and is not a symlink: move it away first"
  fi
}

# load_env_file FILE: export its KEY=value lines, read as systemd reads an EnvironmentFile in
# its simple form: '#' and ';' lines and blank lines skipped, one pair of surrounding quotes
# removed, no shell expansion (a value is never executed). Escapes and line continuations are
# refused rather than misread.
load_env_file() {
  local file="$1" line key value n=0
  [[ -f "$file" ]] || die 2 "environment file $file not found (--env-file; the unit reads the same file)"
  [[ -r "$file" ]] || die 2 "environment file $file is not readable (run as root)"
  while IFS= read -r line || [[ -n "$line" ]]; do
    n=$((n + 1))
    line="${line%$'\r'}"
    line="${line#"${line%%[![:space:]]*}"}"
    [[ -z "$line" || "$line" == \#* || "$line" == \;* ]] && continue
    [[ "$line" == *\\ ]] && die 2 "$file:$n: line continuations are not supported"
    if [[ "$line" != *=* ]]; then
      warn "$file:$n: no '=', ignored (as systemd does)"
      continue
    fi
    key="${line%%=*}"
    key="${key%"${key##*[![:space:]]}"}"
    key="${key#export }"
    value="${line#*=}"
    value="${value#"${value%%[![:space:]]*}"}"
    value="${value%"${value##*[![:space:]]}"}"
    [[ "$key" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || die 2 "$file:$n: '$key' is not a variable name"
    if [[ ${#value} -ge 2 && ( ("$value" == \"*\" ) || ("$value" == \'*\') ) ]]; then
      value="${value:1:${#value}-2}"
    fi
    export "$key=$value"
  done <"$file"
}

default_ready_url() {
  local host="${MMOPS_HTTP_HOST:-127.0.0.1}" port="${MMOPS_HTTP_PORT:-8787}"
  case "$host" in
    "" | 0.0.0.0) host=127.0.0.1 ;;
    "::" | "[::]") host="[::1]" ;;
    *:*) [[ "$host" == \[* ]] || host="[$host]" ;;
  esac
  printf 'http://%s:%s/readyz' "$host" "$port"
}

# --- helpers ------------------------------------------------------------------------------

# json_get EXPR: evaluate EXPR on the JSON document read from stdin (bound to `d`).
json_get() {
  "$PYTHON" -I -c 'import json, sys; d = json.load(sys.stdin); print(eval(sys.argv[1]))' "$1"
}

# probe: one GET of READY_URL; sets PROBE_STATUS (000 when nothing answered) and PROBE_BODY.
probe() {
  local out
  out="$("$PYTHON" -I - "$READY_URL" <<'PY' 2>&1 || true
import sys, urllib.error, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=5) as r:
        print(r.status, r.read(500).decode("utf-8", "replace"))
except urllib.error.HTTPError as e:
    print(e.code, e.read(500).decode("utf-8", "replace"))
except Exception as e:  # refused, timed out, reset: nothing is listening (yet)
    print("000", f"{type(e).__name__}: {e}")
PY
)"
  PROBE_STATUS="${out%% *}"
  PROBE_BODY="${out#* }"
  PROBE_BODY="${PROBE_BODY//$'\n'/ }"
}

# wait_ready: 0 once READY_URL answers 200, 1 when READY_TIMEOUT seconds pass without that.
wait_ready() {
  local deadline=$((SECONDS + READY_TIMEOUT))
  say "waiting up to ${READY_TIMEOUT}s for $READY_URL to answer 200"
  if dry; then
    return 0
  fi
  PROBE_STATUS="000"
  PROBE_BODY="no answer yet"
  while :; do
    probe
    if [[ "$PROBE_STATUS" == 200 ]]; then
      say "ready: $READY_URL answered 200 $PROBE_BODY"
      return 0
    fi
    if ((SECONDS >= deadline)); then
      return 1
    fi
    sleep "$READY_INTERVAL"
  done
}

restart_service() {
  say "restarting: $RESTART_CMD"
  if dry; then
    return 0
  fi
  local rc=0
  # fd 9 (the deploy lock) closed: a service the command starts must not keep holding it.
  timeout "$RESTART_TIMEOUT" bash -c "$RESTART_CMD" 9>&- || rc=$?
  if ((rc == 124)); then
    warn "the restart command took longer than ${RESTART_TIMEOUT}s and was stopped"
  elif ((rc != 0)); then
    warn "the restart command exited $rc"
  fi
  return 0
}

# switch_to TARGET: point ROOT/current at TARGET (relative, e.g. releases/X) atomically.
switch_to() {
  run ln -sfn "$1" "$ROOT/current.new"
  run mv -fT "$ROOT/current.new" "$ROOT/current"
}

new_release_name() {
  local stamp name n=2
  stamp="$(date -u +%Y%m%dT%H%M%SZ)"
  name="$stamp"
  while [[ -e "$ROOT/releases/$name" ]]; do
    name="$stamp-$n"
    n=$((n + 1))
  done
  printf '%s' "$name"
}

# copy_source: the source without build leftovers, so a stale build/lib of the checkout can
# never slip a deleted module into the release.
copy_source() {
  BUILD_DIR="$(mktemp -d "${TMPDIR:-/tmp}/mmops-deploy.XXXXXX")"
  tar -C "$SRC" -cf - \
    --exclude=./.git --exclude=./.venv --exclude=./build --exclude=./dist --exclude='*.egg-info' \
    --exclude=./.mmops --exclude=./backups --exclude=__pycache__ --exclude=.mypy_cache \
    --exclude=.ruff_cache --exclude=.pytest_cache --exclude=.hypothesis . |
    tar -C "$BUILD_DIR" -xf -
}

write_release_info() {
  local rel="$1" commit="unknown"
  if git -C "$SRC" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    commit="$(git -C "$SRC" rev-parse HEAD)"
    if [[ -n "$(git -C "$SRC" status --porcelain --untracked-files=no 2>/dev/null)" ]]; then
      commit="$commit (with uncommitted changes)"
    fi
  fi
  {
    printf 'release: %s\n' "$(basename "$rel")"
    printf 'built_at: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    printf 'source: %s\n' "$SRC"
    printf 'commit: %s\n' "$commit"
    printf 'mmops: %s\n' "$("$rel/.venv/bin/python" -c \
      'import importlib.metadata as m; print(m.version("mmops"))')"
    printf 'python: %s\n' "$("$rel/.venv/bin/python" -c 'import sys; print(sys.version.split()[0])')"
    printf 'built_by: %s\n' "$(id -un 2>/dev/null || echo unknown)"
  } >"$rel/RELEASE"
}

prune_releases() {
  local keep_a="$1" keep_b="$2" name count=0
  local -a names=()
  mapfile -t names < <(find "$ROOT/releases" -mindepth 1 -maxdepth 1 -type d -printf '%f\n' | sort -rV)
  for name in "${names[@]}"; do
    count=$((count + 1))
    if ((count <= KEEP)) || [[ "releases/$name" == "$keep_a" || "releases/$name" == "$keep_b" ]]; then
      continue
    fi
    run rm -rf -- "$ROOT/releases/$name"
  done
}

# --- the deploy ---------------------------------------------------------------------------

main() {
  parse_args "$@"
  check_args
  load_env_file "$ENV_FILE"
  [[ -n "${MMOPS_DATABASE_URL:-}" ]] ||
    die 2 "MMOPS_DATABASE_URL is not set in $ENV_FILE: a deploy backs up and upgrades the production database, never an embedded one"
  [[ -n "$READY_URL" ]] || READY_URL="$(default_ready_url)"
  local -a venv_args pip_args
  read -r -a venv_args <<<"$VENV_ARGS"
  read -r -a pip_args <<<"$PIP_ARGS"

  if dry; then
    say "DRY RUN: printing every step; nothing is installed, backed up, upgraded, switched or restarted"
  else
    mkdir -p "$ROOT/releases"
    exec 9>"$ROOT/.deploy.lock"
    flock -n 9 || die 2 "another deploy holds $ROOT/.deploy.lock"
  fi

  local previous="" name rel mmops
  previous="$(readlink "$ROOT/current" 2>/dev/null || true)"
  name="$(new_release_name)"
  rel="$ROOT/releases/$name"
  mmops="$rel/.venv/bin/mmops"
  say "source $SRC → release $name under $ROOT (live now: ${previous:-none})"

  step "build release $name"
  if ! dry; then
    UNUSED_RELEASE="$rel"
    copy_source
    say "installing a clean copy of $SRC (no build/, .git, .venv): $BUILD_DIR"
  fi
  if ! run "$PYTHON" -m venv "${venv_args[@]}" "$rel/.venv" ||
    ! run "$rel/.venv/bin/python" -m pip install --quiet --disable-pip-version-check \
      "${pip_args[@]}" "${BUILD_DIR:-$SRC}"; then
    die 1 "building the release failed (see pip's message above); nothing was changed"
  fi
  if [[ -d "$SRC/docs" ]]; then
    run cp -R "$SRC/docs" "$rel/docs"
  fi
  if [[ -d "$SRC/deploy" ]]; then
    run cp -R "$SRC/deploy" "$rel/deploy"
  fi
  if ! dry; then
    write_release_info "$rel"
    sed 's/^/  /' "$rel/RELEASE"
  fi

  step "check the new release: mmops db status (settings load, PostgreSQL answers)"
  local out schema_before="(dry run)"
  show "$mmops" db status --json
  if ! dry; then
    if ! out="$("$mmops" db status --json)"; then
      die 1 "the new release cannot read the schema state (message above); nothing was changed"
    fi
    schema_before="$(json_get '([s["id"] for s in d if s["applied"]] or ["none"])[-1]' <<<"$out")"
  fi
  say "schema before the upgrade: $schema_before"

  step "back up the database"
  local backup="(dry run)"
  show "$mmops" db backup --out "$BACKUP_DIR" --json
  if ! dry; then
    if ! out="$("$mmops" db backup --out "$BACKUP_DIR" --json)"; then
      die 1 "the backup failed (message above); nothing was changed, the schema was not upgraded"
    fi
    backup="$(json_get 'd["backup"]' <<<"$out")"
  fi
  say "backup: $backup"

  step "upgrade the schema"
  local schema_after="(dry run)"
  show "$mmops" db upgrade --json
  if ! dry; then
    if ! out="$("$mmops" db upgrade --json)"; then
      die 1 "the schema upgrade failed (message above); the code was not switched and the service not restarted. Each migration is one transaction; see \`mmops db status\`. Backup: $backup"
    fi
    schema_after="$(json_get 'd["latest"]' <<<"$out")"
    say "applied: $(json_get '", ".join(d["applied"]) or "nothing (already current)"' <<<"$out")"
  fi
  say "schema now: $schema_after"

  step "switch $ROOT/current to releases/$name and restart"
  switch_to "releases/$name"
  UNUSED_RELEASE=""
  restart_service
  STEP="waiting for readiness"
  if wait_ready; then
    step "prune old releases (keep $KEEP)"
    if ! dry; then
      prune_releases "releases/$name" "$previous"
    fi
    echo
    if dry; then
      if [[ -n "$previous" ]]; then
        say "if it were not ready: current back to $previous, restart, wait again, exit 3"
      else
        say "if it were not ready: no previous release to roll back to, exit 4"
      fi
      say "DRY RUN complete: nothing was changed"
    else
      say "OK: release $name is live and ready"
    fi
    say "  backup: $backup"
    say "  schema: $schema_before → $schema_after"
    say "  previous release: ${previous:-none}"
    finish 0
  fi
  rollback "$name" "$previous" "$backup" "$schema_before" "$schema_after"
}

rollback() {
  local name="$1" previous="$2" backup="$3" before="$4" after="$5" last previous_dir
  last="$PROBE_STATUS $PROBE_BODY"
  previous_dir="$previous"
  [[ "$previous" == /* ]] || previous_dir="$ROOT/$previous"
  STEP="rollback"
  echo
  warn "NOT READY: $READY_URL did not answer 200 within ${READY_TIMEOUT}s (last answer: $last)"
  printf 'never became ready: %s (last answer: %s)\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$last" \
    >"$ROOT/releases/$name/FAILED"
  if [[ -z "$previous" || ! -d "$previous_dir" ]]; then
    warn "FAILED: release $name never became ready and there is no previous release to roll back to."
    warn "  The service is NOT ready. Its log: journalctl -u mmops; readiness: curl $READY_URL"
    warn "  The schema is at $after (was $before); backup: $backup"
    finish 4
  fi
  warn "ROLLING BACK the code to $previous; the schema stays at $after (was $before; backup: $backup)"
  switch_to "$previous"
  restart_service
  if wait_ready; then
    warn "ROLLED BACK: release $name never became ready; $previous is live again and ready."
    warn "  $ROOT/releases/$name is kept for inspection (marked FAILED); its log: journalctl -u mmops"
    warn "  The schema was not downgraded (it stays at $after); backup taken before the upgrade: $backup"
    finish 3
  fi
  warn "ROLLBACK FAILED: $previous did not become ready either (last answer: $PROBE_STATUS $PROBE_BODY)."
  warn "  The service is DOWN. Its log: journalctl -u mmops; see docs/TROUBLESHOOTING.md (readiness)."
  warn "  The schema is at $after (was $before); backup: $backup"
  finish 4
}

main "$@"
