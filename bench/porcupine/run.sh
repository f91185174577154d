#!/bin/sh
# Porcupine and quorumlab's checker on Porcupine's Jepsen etcd corpus, on this machine, in one go:
#   bench/porcupine/run.sh PORCUPINE_SOURCE [REPEATS]
# PORCUPINE_SOURCE is a checkout of github.com/anishathalye/porcupine (kept outside this
# repository); Go (Debian's golang-go) builds it with no network. Prints the side-by-side table;
# exits 1 if a verdict differs from Porcupine's or from its tests' expectations.
set -eu
src=${1:?usage: bench/porcupine/run.sh PORCUPINE_SOURCE [REPEATS] [--json]}
shift
repeats=${1:-5}
[ $# -gt 0 ] && shift
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -r "$src"/. "$work/porcupine"
cp "$here/corpus_timing_test.go" "$work/porcupine/"
(cd "$work/porcupine" && REPEATS=$repeats OUT="$work/porcupine.json" GOFLAGS=-mod=mod GOPROXY=off \
    go test -count=1 -run TestCorpusTiming . >/dev/null)
quorumlab=${QUORUMLAB:-$here/../../target/release/quorumlab}
"$quorumlab" check --bench "$work/porcupine/test_data/jepsen" --repeats "$repeats" \
    --baseline "$work/porcupine.json" "$@"
