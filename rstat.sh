#!/bin/bash
st() { redis-cli -p 16390 info stats | tr -d '\r' | awk -F: '/^total_commands_processed|^total_reads_processed|^total_writes_processed/{printf "%s ", $2}'; }
read c0 r0 w0 < <(st)
wrk -t2 -c64 -d5s http://127.0.0.1:${1:-18095}/ | grep Requests
read c1 r1 w1 < <(st)
echo "commands $((c1-c0)) reads $((r1-r0)) writes $((w1-w0)) cmds/read $(echo "scale=2; ($c1-$c0)/($r1-$r0)" | bc)"
