#!/usr/bin/env bash
# Replay the Dockerfile's builder stage outside Docker (CI has no engine) and smoke-test the
# result: the same COPY and RUN steps, in the same order, against a fresh venv in a temp
# folder, then `failoverd --version` from that venv.
#
# Container paths are relocated under a temp root ($root/opt/..., $root/src) and `python` is
# the host's Python 3.11 (PYTHON=...). BuildKit's `--mount=type=cache` flags are dropped: the
# host's pip cache plays that part, which keeps a re-run fast.
# Usage: scripts/check-dockerfile.sh [Dockerfile]   (KEEP=1 keeps the temp folder)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dockerfile="${1:-$repo/Dockerfile}"
python="${PYTHON:-python3}"
work="$(mktemp -d "${TMPDIR:-/tmp}/check-dockerfile.XXXXXX")"
[ "${KEEP:-0}" = 1 ] || trap 'rm -rf "$work"' EXIT
root="$work/root"
mkdir -p "$root" "$work/bin"
ln -s "$(command -v "$python")" "$work/bin/python"
export PATH="$work/bin:$PATH"

"$python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || {
    echo "check-dockerfile: need Python 3.11 like the image (set PYTHON=)" >&2
    exit 2
}

relocate() { # rewrite absolute container paths that the builder writes to
    sed -E "s#(^|[[:space:]=])/(opt|src)(/|[[:space:]]|\$)#\1$root/\2\3#g" <<<"$1"
}

# One instruction per line: join backslash continuations, drop comments and blank lines.
instructions="$(sed -e ':a' -e '/\\$/N; s/\\\n[[:space:]]*/ /; ta' "$dockerfile" |
    grep -Ev '^[[:space:]]*(#|$)')"

cwd="$root"
stage=0
while IFS= read -r line; do
    keyword="${line%%[[:space:]]*}"
    args="${line#"$keyword"}"
    args="${args#"${args%%[![:space:]]*}"}"
    case "${keyword^^}" in
    FROM)
        stage=$((stage + 1))
        [ "$stage" -le 1 ] || break # the final stage only copies the venv; needs root
        ;;
    ENV)
        # Only KEY=VALUE pairs without spaces in values: that is all the builder uses.
        for pair in $args; do export "${pair?}"; done
        ;;
    WORKDIR)
        cwd="$(relocate "$args")"
        mkdir -p "$cwd"
        ;;
    COPY)
        read -r -a parts <<<"$args"
        dest="${parts[-1]}"
        [[ "$dest" = /* ]] && dest="$(relocate "$dest")" || dest="$cwd/$dest"
        mkdir -p "$dest"
        for src in "${parts[@]:0:${#parts[@]}-1}"; do
            [[ "$src" = --* ]] && continue
            # Like COPY: a folder's contents land in the destination, not the folder itself.
            if [ -d "$repo/$src" ]; then cp -R "$repo/$src/." "$dest/"; else cp "$repo/$src" "$dest/"; fi
        done
        ;;
    RUN)
        cmd="$(sed -E 's/--mount=[^[:space:]]+[[:space:]]*//g' <<<"$args")"
        cmd="$(relocate "$cmd")"
        echo "check-dockerfile: RUN $cmd" >&2
        (cd "$cwd" && sh -ec "$cmd")
        ;;
    *) ;; # LABEL, ARG, ... do not change what gets installed
    esac
done <<<"$instructions"

version="$("$root/opt/failoverd/bin/failoverd" --version)"
echo "check-dockerfile: ok: $version" >&2
echo "$version"
