# Sourced by the scripts that run Python tools from PyPI. Installs a pinned
# package into .local/venv (gitignored) once, creating the venv first.
#
#   python_tool PACKAGE VERSION   ensure PACKAGE==VERSION is installed
#   "$venv/bin/<tool>"            then run it

venv="${BOOKS_STATE_DIR:-$root/.local}/venv"

python_tool() {
  local package=$1 version=$2
  # grep -x without -q: reading to the end, pip never writes to a closed pipe.
  if "$venv/bin/python" -m pip show "$package" 2>/dev/null | grep -x "Version: $version" >/dev/null; then
    return 0
  fi
  echo "[python] installing $package $version into $venv" >&2
  if [ ! -x "$venv/bin/python" ] && ! python3 -m venv "$venv" 2>/dev/null; then
    # Debian ships venv support as its own package.
    echo "[python] installing python3-venv from apt" >&2
    local sudo_if_needed=""
    [ "$(id -u)" -eq 0 ] || sudo_if_needed="sudo"
    $sudo_if_needed apt-get install -y -qq python3-venv >/dev/null
    rm -rf "$venv"
    python3 -m venv "$venv"
  fi
  "$venv/bin/pip" install --quiet --disable-pip-version-check "$package==$version"
}
