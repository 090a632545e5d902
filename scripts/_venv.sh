# Sourced by scripts/*: create or update .venv with the project and what $1 names (extras).
# Re-installs only when pyproject.toml changed since the last install (a stamp file records its hash).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
extras=${1:-dev}
py=${PYTHON:-python3}
venv="$root/.venv"
if [ ! -x "$venv/bin/python" ]; then
  echo "scripts: creating $venv" >&2
  "$py" -m venv "$venv"
fi
stamp="$venv/.hybridctl-installed"
want="$(sha256sum "$root/pyproject.toml" | cut -c1-16)-$extras"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "scripts: installing hybridctl[$extras] into $venv" >&2
  "$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip 2>&1 | grep -v "^WARNING: Location" >&2 || true
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -e "$root[$extras]" 2>&1 | grep -v "^WARNING: Location" >&2 || true
  "$venv/bin/python" -c "import hybridctl, hybridctl_agent" || { echo "scripts: install failed" >&2; exit 1; }
  echo "$want" > "$stamp"
fi
export PATH="$venv/bin:$PATH"
