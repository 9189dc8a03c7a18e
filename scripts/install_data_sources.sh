#!/usr/bin/env bash
# Install the offline Debian text sources used by `leap-export corpus` and the Bible evaluation set.
# Idempotent: packages already installed are skipped, and `apt-get update` runs only when something is missing.
# Run as root (CI) or with sudo available.
set -euo pipefail

PACKAGES=(fortunes fortunes-min wordnet-base sword-text-kjv sword-text-web dict-gcide python3.11-doc)

export DEBIAN_FRONTEND=noninteractive

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo -E"
    else
        echo "error: run this script as root (or install sudo): it installs Debian packages" >&2
        exit 1
    fi
fi

missing=()
for pkg in "${PACKAGES[@]}"; do
    status="$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)"
    if [ "$status" != "install ok installed" ]; then
        missing+=("$pkg")
    fi
done

if [ "${#missing[@]}" -eq 0 ]; then
    echo "all data sources already installed: ${PACKAGES[*]}"
    exit 0
fi

echo "installing: ${missing[*]}"
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
echo "installed: ${missing[*]}"
