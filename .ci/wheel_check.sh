#!/usr/bin/env bash
# Build the wheel, install it into a fresh virtual environment with the core dependencies
# alone, and run `import otcfm`, `otcfm --version` and the README's library quickstart there.
# Each extra must add only what it names: the core install must not pull any of them in.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$PYTHON" -m venv "$work/venv"
py="$work/venv/bin/python"
"$py" -m pip install --quiet --upgrade pip
"$py" -m pip wheel --quiet --no-deps --wheel-dir "$work/dist" .
"$py" -m pip install --quiet "$TORCH_SPEC" || "$py" -m pip install --quiet "torch>=2.1"
"$py" -m pip install --quiet "$work"/dist/otcfm-*.whl
# the core alone: none of the extras' packages came with it
for extra_pkg in matplotlib tqdm numba lap anndata sklearn PIL sphinx pytest torchcfm; do
  if "$py" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$extra_pkg') is None)"; then
    echo "wheel-check: the core install pulled in '$extra_pkg', which belongs to an extra" >&2
    exit 1
  fi
done
cd "$work"  # not the repository: the import must come from the installed wheel
"$py" - <<'PY'
import pathlib
import otcfm
assert "site-packages" in otcfm.__file__, otcfm.__file__
print("installed", otcfm.__version__, "from", pathlib.Path(otcfm.__file__).parent)
PY
"$work/venv/bin/otcfm" --version
# the README quickstart, as written (its first python block after the heading)
"$py" - "$REPO/README.md" <<'PY'
import re, sys
text = open(sys.argv[1]).read().split("## Library quickstart", 1)[1]
code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
exec(compile(code, "README quickstart", "exec"), {"__name__": "__main__"})
PY
echo "wheel-check: passed"
