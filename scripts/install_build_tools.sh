#!/usr/bin/env bash
# The C and C++ compilers the C API's tests build with (tests/test_capi.py: examples/cpp and the sanitizer
# builds; gcc's AddressSanitizer and UndefinedBehaviorSanitizer runtimes come with it). CMake comes from the
# dev extra (the cmake wheel). Idempotent: nothing runs when g++ is already there. Run as root (CI) or with
# sudo available.
set -euo pipefail

if command -v g++ >/dev/null 2>&1 && command -v gcc >/dev/null 2>&1; then
    echo "C and C++ compilers present: $(g++ --version | head -n 1)"
    exit 0
fi

export DEBIAN_FRONTEND=noninteractive
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo -E"
    else
        echo "error: run this script as root (or install sudo, or install g++ yourself): it installs Debian packages" >&2
        exit 1
    fi
fi
echo "installing: gcc g++"
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends gcc g++ libc6-dev
echo "installed: $(g++ --version | head -n 1)"
