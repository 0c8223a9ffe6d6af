#!/usr/bin/env bash
# Print the path of a Python 3.10 interpreter (lava-nc 0.10.0 needs exactly 3.10), looking on
# PATH first and then in pyenv; exit 1 with instructions when there is none.
set -u
is310() { "$1" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 10) else 1)' >/dev/null 2>&1; }
for c in "${PYTHON310:-}" python3.10 python3 python; do
  [ -n "$c" ] || continue
  p=$(command -v "$c" 2>/dev/null) || continue
  if is310 "$p"; then echo "$p"; exit 0; fi
done
if command -v pyenv >/dev/null 2>&1; then
  root=$(pyenv root)
  for p in "$root"/versions/3.10*/bin/python3.10; do
    if [ -x "$p" ] && is310 "$p"; then echo "$p"; exit 0; fi
  done
fi
cat >&2 <<'MSG'
error: snncompile needs Python 3.10 (lava-nc 0.10.0, the Loihi simulator, does not import on 3.11+).
  fix: install it, e.g. `pyenv install 3.10` (https://github.com/pyenv/pyenv) or your system's
       python3.10 package, or point PYTHON310=/path/to/python3.10 at one; then run make again.
MSG
exit 1
