#!/bin/sh
# Instructions per request of the webhook and of the bare server over real TLS connections,
# counted by valgrind's callgrind (load on the machine does not change them).
#
#   bench/scripts/callgrind-per-request.sh [WORKLOAD...]     (default: every workload)
#
# Runs webhook-load twice per workload at 100 requests/s with both servers under callgrind,
# for 2 s and 6 s per rate, and divides the difference of the instruction totals by the
# difference of the requests sent, so start-up and the fixed part of each run cancel out.
# Needs the release build (make bench builds it) and valgrind.
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
release=${CARGO_TARGET_DIR:-$root/target}/release
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The servers run under callgrind in the background of a wrapper, so that when the benchmark
# kills the wrapper, callgrind lives on to be asked for its counts.
cat > "$work/prefetch-webhook" <<WRAP
#!/bin/sh
valgrind --tool=callgrind --callgrind-out-file=$work/webhook.\$RUN.out "$release/prefetch-webhook" "\$@" &
echo \$! > $work/webhook.\$RUN.pid
wait
WRAP
cat > "$work/bare" <<WRAP
#!/bin/sh
valgrind --tool=callgrind --callgrind-out-file=$work/bare.\$RUN.out "\$@" &
echo \$! > $work/bare.\$RUN.pid
wait
WRAP
chmod +x "$work/prefetch-webhook" "$work/bare"

# run WORKLOAD SECONDS: prints "server instructions requests" for both servers.
run() {
    RUN=$1-$2
    export RUN
    PREFETCH_BIN_DIR=$work "$release/webhook-load" --workloads "$1" --start-rate 100 \
        --max-rate 100 --seconds "$2" --warmup-seconds 1 --bare-wrapper "$work/bare" \
        > "$work/$RUN.txt" 2>&1
    for server in webhook bare; do
        pid=$(cat "$work/$server.$RUN.pid")
        callgrind_control -d "$pid" > /dev/null 2>&1
        kill -9 "$pid"
        total=$(sed -n 's/^summary: //p' "$work/$server.$RUN.out.1")
        sent=$(awk -v s="$server" -v w="$1" '$1 == w && $2 == s { n += $4 } END { print n }' "$work/$RUN.txt")
        echo "$server $total $sent"
    done
}

for workload in ${@:-deployment prefetch-default prefetch-validate}; do
    run "$workload" 2 | sort > "$work/short"
    run "$workload" 6 | sort > "$work/long"
    join "$work/short" "$work/long" | awk -v w="$workload" '
        { per[$1] = ($4 - $2) / ($5 - $3) }
        END { printf "%s: webhook %.0f, bare %.0f instructions per request (%.2fx)\n",
              w, per["webhook"], per["bare"], per["webhook"] / per["bare"] }'
done
