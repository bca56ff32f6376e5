#!/bin/sh
# The image build's first step: check the base, the lock and the vocabulary before anything is
# installed, and fail with a message that names the cause. POSIX sh only: the base may have
# nothing else yet. Run by the Dockerfile with VARIANT and VOCAB_SHA256 set.
set -eu
BUILD=/opt/gpt-oss-cluster/build
VOCAB=/opt/gpt-oss-cluster/vocab/o200k_base.tiktoken

fail() {
    echo "error: $*" >&2
    exit 1
}

# Python 3.11 with venv and ensurepip: the package pins 3.11, and the lock's wheels are cp311.
command -v python3 >/dev/null 2>&1 \
    || fail "the BASE image has no python3: use a base with Python 3.11 (python:3.11-slim-bookworm, or a Debian bookworm rootfs with python3 and python3-venv)"
version=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
[ "$version" = "3.11" ] || fail "the BASE image has Python $version; the lock is for Python 3.11"
python3 -c 'import venv, ensurepip' 2>/dev/null \
    || fail "the BASE image's Python has no venv/ensurepip (Debian: install python3-venv)"

# Tools the image needs at run time: bash (KubeRay runs `bash -lc`), wget (KubeRay's probes), and
# for the GPU image a C compiler and Python's headers (Triton compiles its launchers at run time).
needed=""
command -v bash >/dev/null 2>&1 || needed="$needed bash"
command -v wget >/dev/null 2>&1 || needed="$needed wget"
if [ "$VARIANT" = gpu ]; then
    command -v gcc >/dev/null 2>&1 || needed="$needed gcc libc6-dev"
    python3 -c 'import sysconfig, os, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
        || needed="$needed python3-dev"
fi
if [ -n "$needed" ]; then
    command -v apt-get >/dev/null 2>&1 \
        || fail "the BASE image lacks$needed and has no apt-get to install them"
    echo "installing from the base's package mirror:$needed"
    apt-get update -qq \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $needed >/dev/null \
        && rm -rf /var/lib/apt/lists/* \
        || fail "could not install$needed with apt-get (an air-gapped build needs a base that has them)"
fi

# The lock must be the one pyproject.toml describes (tools/lock.py: standard library only).
python3 "$BUILD/lock.py" check --pyproject "$BUILD/pyproject.toml" "$BUILD/lock.txt"

# The vocabulary: present in the build context's vocab/ and byte for byte the published file.
[ -f "$VOCAB" ] \
    || fail "the vocabulary is missing: put o200k_base.tiktoken (sha256 $VOCAB_SHA256) in the build context's vocab/ (tools/image.py does; air-gapped: the bundle's copy)"
echo "$VOCAB_SHA256  $VOCAB" | sha256sum -c --status \
    || fail "vocab/o200k_base.tiktoken has sha256 $(sha256sum "$VOCAB" | cut -d' ' -f1), expected $VOCAB_SHA256"
echo "preflight: Python $version, lock matches pyproject.toml, vocabulary verified"
