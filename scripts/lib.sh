# Shared by scripts/run, scripts/test and scripts/bench: find Python >= 3.12 and prepare .venv.
# Sourced, not executed.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"

find_python() {
  local candidates=()
  [ -n "${SPENDGATE_PYTHON:-}" ] && candidates+=("$SPENDGATE_PYTHON")
  candidates+=(python3.13 python3.12 python3)
  if command -v pyenv >/dev/null 2>&1; then
    local root; root="$(pyenv root)"
    candidates+=("$root"/versions/3.13*/bin/python3 "$root"/versions/3.12*/bin/python3)
  fi
  candidates+=(/usr/local/bin/python3.13 /usr/local/bin/python3.12 /usr/bin/python3.13 /usr/bin/python3.12 "$HOME"/.pyenv/versions/3.1[23]*/bin/python3)
  local c
  for c in "${candidates[@]}"; do
    if command -v "$c" >/dev/null 2>&1 && "$c" -c 'import sys, venv; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then
      command -v "$c"; return 0
    fi
  done
  cat >&2 <<'MSG'
spendgate needs Python 3.12 or newer (mitmproxy 12 does), and none was found.
Install one, for example:
  Debian/Ubuntu:  sudo apt-get install python3.12 python3.12-venv
  macOS:          brew install python@3.12
  pyenv:          pyenv install 3.12
or point SPENDGATE_PYTHON at an interpreter.
MSG
  return 1
}

# ensure_venv EXTRAS  -- create .venv if needed and install spendgate (editable) with EXTRAS.
# The stamp remembers the pyproject.toml it installed and which extras, so running scripts/run after
# scripts/test (or the other way round) does not reinstall anything.
ensure_venv() {
  local want="${1:-}" hash stamp have extras
  hash="$(sha256sum "$ROOT/pyproject.toml" | cut -c1-16)"
  if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then
    local py; py="$(find_python)" || exit 1
    echo "spendgate: creating $VENV with $py" >&2
    rm -rf "$VENV"
    "$py" -m venv "$VENV"
  fi
  stamp="$(cat "$VENV/.spendgate-stamp" 2>/dev/null || true)"
  have=""
  [ "${stamp%% *}" = "$hash" ] && have="${stamp#* }" && [ "$have" = "$stamp" ] && have=""
  if [ "${stamp%% *}" = "$hash" ] && { [ -z "$want" ] || [[ ",$have," == *",$want,"* ]]; }; then
    compile_sources
    return 0
  fi
  extras="$(printf '%s\n' ${have//,/ } $want | sort -u | paste -sd, -)"
  echo "spendgate: installing dependencies into $VENV${extras:+ (extras: $extras)}" >&2
  "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  PYTHONWARNINGS=ignore "$VENV/bin/python" -m pip install -q -e "$ROOT${extras:+[$extras]}" 2>&1 | grep -v '^WARNING: Location' >&2 || true
  "$VENV/bin/python" -c 'import spendgate, mitmproxy, duckdb, genai_prices' \
    || { echo "spendgate: installation failed (see above)" >&2; exit 1; }
  echo "$hash ${extras}" > "$VENV/.spendgate-stamp"
  compile_sources
}

# compile_sources -- write the bytecode of spendgate and its addons now, as `pip install` (not
# editable) does at install time. An editable checkout is otherwise compiled on import, and never
# cached where PYTHONDONTWRITEBYTECODE is set (as on this project's machines and CI): every gateway start would then
# compile ~110 modules anew, ~0.25 s of a ~1.3 s start (issue 18). Only changed files are
# compiled, in this process: ~0.05 s when nothing changed (`-j 0` started a pool of workers at
# every setup, ~0.25 s, and compiled everything no faster). A checkout it cannot write to is
# skipped (each setup would otherwise compile all of it again, to nowhere).
compile_sources() {
  [ -w "$ROOT/spendgate" ] || return 0
  "$VENV/bin/python" -m compileall -q "$ROOT/spendgate" "$ROOT/addons" >/dev/null 2>&1 || true
}
