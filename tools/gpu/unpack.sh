# shellcheck shell=bash
# Sourced by correctness.sh and speed.sh (needs $here): the stage carries its binaries as one
# bin.tar.xz (they share most of their bytes, so the archive is a fifth of their size); unpack it
# into $here/bin once, with Python's tarfile (no xz tool needed on the GPU machine).
if [[ ! -d "${here:?}/bin" && -f "$here/bin.tar.xz" ]]; then
  if ! python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' \
    "${here:?}/bin.tar.xz" "$here"; then
    echo "cannot unpack $here/bin.tar.xz into $here (is the folder writable?)" >&2
    exit 1
  fi
fi
