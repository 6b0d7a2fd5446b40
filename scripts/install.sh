#!/usr/bin/env bash
# Install failoverd on a VM with systemd: build a wheel from this checkout (python -m build),
# install it into its own virtualenv, link the command, install the unit, the sysusers and
# tmpfiles files and the example settings, create an API token, and say what to do next.
#
#   sudo scripts/install.sh                       # into /opt/failoverd, /usr/local/bin, /etc
#   scripts/install.sh --root /tmp/stage          # a staged tree (packaging, tests)
#
# Options:
#   --prefix DIR   the virtualenv (default /opt/failoverd)
#   --bindir DIR   where the `failoverd` command is linked (default /usr/local/bin)
#   --root DIR     install under DIR as if it were / (default /). Paths written into files
#                  (the unit's ExecStart, the command's link, the scripts' #! lines) are the
#                  final ones, without DIR; the system user and the API token are only
#                  created when DIR is /.
#   --wheel FILE   install this wheel instead of building one
#   --extras LIST  install extras too, e.g. --extras sandbox (default: none)
#   --python PY    the Python (>= 3.11) to build with and to base the virtualenv on
#                  (default: python3; $PYTHON also works)
#
# Idempotent: running it again upgrades the virtualenv in place and keeps the settings,
# policies and token files that are already there. Nothing is started: the last lines say
# how (systemctl daemon-reload && systemctl enable --now failoverd).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
prefix=/opt/failoverd
bindir=/usr/local/bin
root=/
wheel=""
extras=""
python="${PYTHON:-python3}"

usage() { sed -n '2,23p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
die() { echo "install: $*" >&2; exit 2; }

while [ $# -gt 0 ]; do
    case "$1" in
    --prefix) prefix="${2:?--prefix needs a directory}"; shift 2 ;;
    --bindir) bindir="${2:?--bindir needs a directory}"; shift 2 ;;
    --root) root="${2:?--root needs a directory}"; shift 2 ;;
    --wheel) wheel="${2:?--wheel needs a file}"; shift 2 ;;
    --extras) extras="${2:?--extras needs a list}"; shift 2 ;;
    --python) python="${2:?--python needs an interpreter}"; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
    esac
done
[ "${prefix#/}" != "$prefix" ] && [ "${bindir#/}" != "$bindir" ] ||
    die "--prefix and --bindir must be absolute paths"
mkdir -p "$root"
root="$(cd "$root" && pwd)"
stage() { [ "$root" = / ] && echo "$1" || echo "$root$1"; } # a final path, under the root
command -v "$python" >/dev/null || die "no $python: install Python 3.11+ with venv"
"$python" -c 'import sys, venv; sys.exit(sys.version_info < (3, 11))' 2>/dev/null ||
    die "$python is not Python >= 3.11 with the venv module (apt-get install python3-venv)"

work="$(mktemp -d "${TMPDIR:-/tmp}/failoverd-install.XXXXXX")"
trap 'rm -rf "$work"' EXIT

# 1. The wheel: built with PEP 517 `build` (from a throwaway virtualenv if $python lacks it).
if [ -z "$wheel" ]; then
    builder="$python"
    if ! "$python" -m build --version >/dev/null 2>&1; then
        "$python" -m venv "$work/build-env"
        "$work/build-env/bin/python" -m pip install -q --disable-pip-version-check build
        builder="$work/build-env/bin/python"
    fi
    echo "install: building the wheel (python -m build)" >&2
    "$builder" -m build --wheel --outdir "$work/dist" "$repo" >"$work/build.log" 2>&1 ||
        { cat "$work/build.log" >&2; die "the wheel did not build"; }
    wheel="$(ls "$work"/dist/failoverd-*.whl)"
fi
[ -f "$wheel" ] || die "no wheel at $wheel"

# 2. Its own virtualenv: the daemon's dependencies never mix with the system's.
venv="$(stage "$prefix")"
echo "install: virtualenv $prefix ($(basename "$wheel"))" >&2
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
spec="$wheel"
[ -z "$extras" ] || spec="failoverd[$extras] @ file://$wheel"
"$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
"$venv/bin/python" -m pip install -q --disable-pip-version-check --force-reinstall --no-deps \
    "$wheel"
"$venv/bin/python" -m pip install -q --disable-pip-version-check "$spec"
if [ "$root" != / ]; then
    # A staged tree is copied to / later: #! lines and activate scripts name the final path.
    { grep -rlIF "$venv" "$venv/bin" "$venv/pyvenv.cfg" || true; } | while IFS= read -r f; do
        sed -i "s#$venv#$prefix#g" "$f"
    done
fi

# 3. The command, for operators' shells (the unit runs the virtualenv's own).
mkdir -p "$(stage "$bindir")"
ln -sfn "$prefix/bin/failoverd" "$(stage "$bindir")/failoverd"

# 4. systemd: the unit (ExecStart in the virtualenv), the user, the state folder.
unit="$(stage /etc/systemd/system)"
mkdir -p "$unit" "$(stage /usr/lib/sysusers.d)" "$(stage /usr/lib/tmpfiles.d)"
sed "s#^ExecStart=/usr/bin/failoverd #ExecStart=$prefix/bin/failoverd #" \
    "$repo/systemd/failoverd.service" >"$unit/failoverd.service"
grep -q "^ExecStart=$prefix/bin/failoverd " "$unit/failoverd.service" ||
    die "systemd/failoverd.service has no ExecStart=/usr/bin/failoverd line to point at $prefix"
chmod 0644 "$unit/failoverd.service"
install -m 0644 "$repo/systemd/failoverd.sysusers" "$(stage /usr/lib/sysusers.d/failoverd.conf)"
install -m 0644 "$repo/systemd/failoverd.tmpfiles" "$(stage /usr/lib/tmpfiles.d/failoverd.conf)"

# 5. Settings and policies: the example settings once; existing files are never touched.
etc="$(stage /etc/failoverd)"
mkdir -p "$etc/policies"
[ -e "$etc/failoverd.yaml" ] ||
    install -m 0640 "$repo/systemd/failoverd.example.yaml" "$etc/failoverd.yaml"

# 6. The system user and the folders (only on the real root: they change /etc/passwd).
if [ "$root" = / ]; then
    systemd-sysusers /usr/lib/sysusers.d/failoverd.conf
    systemd-tmpfiles --create /usr/lib/tmpfiles.d/failoverd.conf
    chgrp failoverd /etc/failoverd/failoverd.yaml  # the daemon's group reads the settings
fi

# 7. A first API token (a `label:token` line), readable by the daemon's user only. Never in a
#    staged tree: a package would ship the same secret to every host.
token_note="  API token /etc/failoverd/api-token: create it (one 'label:token' line per operator)"
if [ "$root" = / ]; then
    if [ ! -e /etc/failoverd/api-token ]; then
        (umask 077 && printf 'admin:%s\n' "$("$venv/bin/python" -c \
            'import secrets; print(secrets.token_urlsafe(32))')" >/etc/failoverd/api-token)
        chown failoverd:failoverd /etc/failoverd/api-token
    fi
    token_note="  API token /etc/failoverd/api-token (add one 'label:token' line per operator)"
fi

cat <<EOF
install: failoverd $("$venv/bin/python" -c 'import orchestrator; print(orchestrator.__version__)') installed
  command   $bindir/failoverd -> $prefix/bin/failoverd
  unit      /etc/systemd/system/failoverd.service (ExecStart=$prefix/bin/failoverd)
  settings  /etc/failoverd/failoverd.yaml   policies /etc/failoverd/policies/
$token_note
next:
  1. put your policies in /etc/failoverd/policies and check them:
       failoverd validate /etc/failoverd/policies
  2. attach the IAM policy to this instance's role:  failoverd iam-policy --policy /etc/failoverd/policies
  3. start it, in advisory mode first (docs/rollout.md):
       systemctl daemon-reload && systemctl enable --now failoverd
EOF
