#!/usr/bin/env bash
# Fresh-machine setup, the README's setup command: the system packages the tests use (Orthanc with its DICOMweb
# plugin for the PACS tests, headless Chromium for the OHIF tests; Debian packages, installed with apt-get when
# missing) and the Python environment .venv from requirements.txt.
#
#   bash tools/setup.sh            install what is missing, create or update .venv
#   bash tools/setup.sh --fresh    the same, with .venv rebuilt from scratch (CI: .ci/run)
#   bash tools/setup.sh --check    only say which system packages are missing (exit 1 if any)
set -euo pipefail
cd "$(dirname "$0")/.."

SYSTEM_PACKAGES=(orthanc orthanc-dicomweb chromium)
mode=install
for arg in "$@"; do
    case "$arg" in
        --fresh) mode=fresh ;;
        --check) mode=check ;;
        *) echo "usage: bash tools/setup.sh [--fresh | --check]" >&2; exit 2 ;;
    esac
done

have_orthanc() { command -v Orthanc >/dev/null 2>&1 || [ -x /usr/sbin/Orthanc ]; }
have_dicomweb() {
    for dir in /usr/share/orthanc/plugins /usr/lib/orthanc/plugins /usr/local/share/orthanc/plugins; do
        [ -f "$dir/libOrthancDicomWeb.so" ] && return 0
    done
    return 1
}
have_chromium() { command -v chromium >/dev/null 2>&1; }

missing=()
have_orthanc || missing+=(orthanc)
have_dicomweb || missing+=(orthanc-dicomweb)
have_chromium || missing+=(chromium)

if [ "$mode" = check ]; then
    if [ ${#missing[@]} -eq 0 ]; then
        echo "system packages: ${SYSTEM_PACKAGES[*]} present"
        exit 0
    fi
    echo "system packages missing: ${missing[*]}" >&2
    exit 1
fi

if [ ${#missing[@]} -gt 0 ]; then
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "missing ${missing[*]}: install Orthanc with its DICOMweb plugin and Chromium with this system's" \
            "package manager, then run this again." >&2
        exit 1
    fi
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    $sudo apt-get update -q
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${SYSTEM_PACKAGES[@]}"
fi

if [ "$mode" = fresh ]; then rm -rf .venv; fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -r requirements.txt
echo "setup done: activate the environment with  . .venv/bin/activate"
