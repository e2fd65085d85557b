#!/usr/bin/env bash
# A throw-away Orthanc PACS on loopback, for tests that store DICOM outputs and read them back.
#
#   scripts/orthanc_server.sh start [DIR]   install Orthanc if missing (apt), start it with its own
#                                           storage in DIR (default: a new temp folder) on two free
#                                           ports, wait until it answers, print KEY=VALUE lines:
#                                           ORTHANC_DIR, ORTHANC_PID, ORTHANC_HTTP_PORT,
#                                           ORTHANC_DICOM_PORT, ORTHANC_AET, ORTHANC_CLIENT_AET
#   scripts/orthanc_server.sh stop DIR      stop the Orthanc started in DIR and delete DIR
#
# Loopback only: the REST API refuses remote hosts (RemoteAccessAllowed false, so no login is
# needed) and the DICOM port accepts C-STORE/C-ECHO only from the client AE title
# ${ORTHANC_CLIENT_AET} calling from 127.0.0.1 (DicomCheckModalityHost). No plugin is loaded, unless
# ORTHANC_DICOMWEB=1: then the DICOMweb plugin (Debian package 'orthanc-dicomweb', installed if
# missing) serves QIDO-RS/WADO-RS/STOW-RS under /dicom-web/ on the same loopback HTTP port, and
# ORTHANC_DICOMWEB_ROOT=/dicom-web/ is printed too.
# Exit codes: 0 ok, 1 usage/start failure, 3 Orthanc (or its DICOMweb plugin) is missing and cannot
# be installed.
set -euo pipefail

AET="LNMETPACS"
DICOMWEB="${ORTHANC_DICOMWEB:-0}"
DICOMWEB_PLUGIN_DIRS=(/usr/share/orthanc/plugins /usr/lib/orthanc)
CLIENT_AET="LNMETSCU"
MARKER=".lnmet-orthanc"

die() { echo "orthanc_server.sh: $*" >&2; exit 1; }

ensure_installed() {
    if command -v Orthanc >/dev/null 2>&1 || [ -x /usr/sbin/Orthanc ]; then
        return 0
    fi
    echo "orthanc_server.sh: Orthanc not found, installing the Debian package 'orthanc'" >&2
    local as_root=()
    if [ "$(id -u)" != "0" ]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
            as_root=(sudo -n)
        else
            echo "orthanc_server.sh: Orthanc is not installed and cannot be installed (not root, no sudo)" >&2
            exit 3
        fi
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "orthanc_server.sh: Orthanc is not installed and cannot be installed (no apt-get)" >&2
        exit 3
    fi
    apt_install "${as_root[@]}" -- orthanc
    # The package starts a system service on the default ports; this script does not use it.
}

apt_install() {
    # apt_install [ROOT-PREFIX...] -- PACKAGE: install one Debian package, refreshing the lists once
    # if the first try fails; exit 3 when it cannot be had.
    local prefix=()
    while [ "$1" != "--" ]; do prefix+=("$1"); shift; done
    shift
    if ! "${prefix[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$1" >&2; then
        "${prefix[@]}" apt-get update >&2 || true
        if ! "${prefix[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$1" >&2; then
            echo "orthanc_server.sh: '$1' is not installed and 'apt-get install $1' failed" >&2
            exit 3
        fi
    fi
}

dicomweb_plugin() {
    # Path of the DICOMweb plugin library, or nothing.
    local d
    for d in "${DICOMWEB_PLUGIN_DIRS[@]}"; do
        if [ -e "$d/libOrthancDicomWeb.so" ]; then echo "$d/libOrthancDicomWeb.so"; return 0; fi
    done
    ls /usr/lib/orthanc/libOrthancDicomWeb.so* 2>/dev/null | head -n 1
}

ensure_dicomweb_installed() {
    [ -n "$(dicomweb_plugin)" ] && return 0
    echo "orthanc_server.sh: the DICOMweb plugin is missing, installing the Debian package 'orthanc-dicomweb'" >&2
    local as_root=()
    if [ "$(id -u)" != "0" ]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
            as_root=(sudo -n)
        else
            echo "orthanc_server.sh: orthanc-dicomweb is not installed and cannot be installed (not root, no sudo)" >&2
            exit 3
        fi
    fi
    apt_install "${as_root[@]}" -- orthanc-dicomweb
    [ -n "$(dicomweb_plugin)" ] || { echo "orthanc_server.sh: orthanc-dicomweb installed but its library was not found" >&2; exit 3; }
}

orthanc_bin() {
    command -v Orthanc 2>/dev/null || echo /usr/sbin/Orthanc
}

free_port() {
    # Ask the kernel for a free loopback port.
    local py
    py="$(command -v python3 || command -v python || true)"
    [ -n "$py" ] || die "python3 is needed to find a free port"
    "$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

start() {
    local dir="${1:-}"
    ensure_installed
    local plugins="[]"
    if [ "$DICOMWEB" = "1" ]; then
        ensure_dicomweb_installed
        plugins="[ \"$(dicomweb_plugin)\" ]"
    fi
    if [ -z "$dir" ]; then
        dir="$(mktemp -d "${TMPDIR:-/tmp}/lnmet-orthanc.XXXXXX")"
    else
        mkdir -p "$dir"
        [ -z "$(ls -A "$dir")" ] || die "folder $dir is not empty; give an empty or new folder"
    fi
    touch "$dir/$MARKER"
    mkdir -p "$dir/storage" "$dir/index" "$dir/logs"
    local http dicom
    http="$(free_port)"
    dicom="$(free_port)"
    while [ "$dicom" = "$http" ]; do dicom="$(free_port)"; done
    cat > "$dir/orthanc.json" <<EOF
{
  "Name": "lnmet-test-pacs",
  "StorageDirectory": "$dir/storage",
  "IndexDirectory": "$dir/index",
  "Plugins": $plugins,
  "DicomWeb": { "Enable": true, "Root": "/dicom-web/", "EnableWado": false, "Ssl": false,
                "StudiesMetadata": "Full", "SeriesMetadata": "Full" },
  "HttpServerEnabled": true,
  "HttpPort": $http,
  "RemoteAccessAllowed": false,
  "AuthenticationEnabled": false,
  "DicomServerEnabled": true,
  "DicomAet": "$AET",
  "DicomPort": $dicom,
  "DicomCheckCalledAet": true,
  "DicomAlwaysAllowEcho": false,
  "DicomAlwaysAllowStore": false,
  "DicomCheckModalityHost": true,
  "DicomModalities": { "client": [ "$CLIENT_AET", "127.0.0.1", 104 ] },
  "UnknownSopClassAccepted": false,
  "SaveJobs": false,
  "StorageCompression": false,
  "HttpsVerifyPeers": false
}
EOF
    "$(orthanc_bin)" --logdir="$dir/logs" "$dir/orthanc.json" >"$dir/logs/stdout.log" 2>&1 &
    local pid=$!
    echo "$pid" > "$dir/orthanc.pid"
    local i
    for i in $(seq 1 150); do
        if curl -sf "http://127.0.0.1:$http/system" >/dev/null 2>&1; then
            echo "ORTHANC_DIR=$dir"
            echo "ORTHANC_PID=$pid"
            echo "ORTHANC_HTTP_PORT=$http"
            echo "ORTHANC_DICOM_PORT=$dicom"
            echo "ORTHANC_AET=$AET"
            echo "ORTHANC_CLIENT_AET=$CLIENT_AET"
            [ "$DICOMWEB" = "1" ] && echo "ORTHANC_DICOMWEB_ROOT=/dicom-web/"
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 20 "$dir/logs/stdout.log" >&2 || true
            die "Orthanc exited during start-up (logs in $dir/logs)"
        fi
        sleep 0.2
    done
    kill "$pid" 2>/dev/null || true
    die "Orthanc did not answer on http://127.0.0.1:$http within 30 s (logs in $dir/logs)"
}

stop() {
    local dir="${1:-}"
    [ -n "$dir" ] || die "usage: $0 stop DIR"
    [ -f "$dir/$MARKER" ] || die "$dir was not made by '$0 start'; not touching it"
    if [ -f "$dir/orthanc.pid" ]; then
        local pid
        pid="$(cat "$dir/orthanc.pid")"
        if kill -0 "$pid" 2>/dev/null; then
            kill "$pid"
            local i
            for i in $(seq 1 50); do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.1
            done
            kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
        fi
    fi
    rm -rf "$dir"
}

case "${1:-}" in
    start) shift; start "${1:-}" ;;
    stop) shift; stop "${1:-}" ;;
    *) echo "usage: $0 start [DIR] | stop DIR" >&2; exit 1 ;;
esac
