#!/usr/bin/env bash
# What the packet-capture hooks cost the forwarding loop when no capture
# runs (issue 7's budget: within 5%). Builds router/engine's benchmark twice,
# as shipped and with the hooks compiled out (-tags podrouter_notaps), runs
# BenchmarkForward alternately ROUNDS times each in this session and prints
# benchstat's comparison (old = without taps, new = as shipped).
#   bench/tapcost.sh [ROUNDS] [BENCHTIME]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-8}
benchtime=${2:-2000000x}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
go test -c -o "$tmp/notaps.test" -tags podrouter_notaps ./router/engine
go test -c -o "$tmp/taps.test" ./router/engine
for _ in $(seq "$rounds"); do
	"$tmp/notaps.test" -test.run NONE -test.bench Forward -test.benchmem -test.benchtime "$benchtime" >>"$tmp/notaps.txt"
	"$tmp/taps.test" -test.run NONE -test.bench Forward -test.benchmem -test.benchtime "$benchtime" >>"$tmp/taps.txt"
done
benchstat=$(command -v benchstat || echo "$(go env GOPATH)/bin/benchstat")
if [ -x "$benchstat" ]; then
	"$benchstat" "$tmp/notaps.txt" "$tmp/taps.txt"
else
	echo "benchstat not found (go install golang.org/x/perf/cmd/benchstat@latest); raw results:"
	echo "== without taps"; grep ^Benchmark "$tmp/notaps.txt"
	echo "== as shipped"; grep ^Benchmark "$tmp/taps.txt"
fi
