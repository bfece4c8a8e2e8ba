#!/bin/sh
# Instructions per request of the webhook and of the bare server over real TLS
# connections, counted by valgrind's callgrind (load on the machine does not change them).
#
#   bench/scripts/callgrind-per-request.sh [WORKLOAD...]     (default: every workload)
#
# Runs webhook-load twice per workload at 100 requests/s with both servers under
# callgrind, for 2 s and 6 s per rate, and divides the difference of the instructions by the
# difference of the requests sent, so start-up and the fixed part of each run cancel out. Each
# run is one fixed-rate run per server (--rates): a saturation search reruns tries that fail
# under valgrind's slowdown, and the warm-up requests of those reruns are in the instructions
# but not in the requests counted.
# Two figures per server:
#   serving  the instructions inside hyper's connection task (reading and decrypting the
#            request, the service, writing the response): the steady one;
#   process  every instruction of the process, which also counts TLS handshakes (about half
#            a million instructions each); how many the client makes differs between the
#            two runs, so this one moves by tens of thousands between runs.
# Needs the release build (make bench builds it) and valgrind.
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
release=${CARGO_TARGET_DIR:-$root/target}/release
work=$(mktemp -d)
# KEEP_PROFILES=DIR keeps the callgrind files (for callgrind_annotate) in DIR.
trap 'if [ -n "${KEEP_PROFILES:-}" ]; then cp "$work"/*.out* "$KEEP_PROFILES"/; fi; rm -rf "$work"' EXIT

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

# run WORKLOAD SECONDS: prints "server process-instructions serving-instructions requests".
run() {
    RUN=$1-$2
    export RUN
    PREFETCH_BIN_DIR=$work "$release/webhook-load" --workloads "$1" --rates 100 \
        --seconds "$2" --warmup-seconds 1 --bare-wrapper "$work/bare" \
        > "$work/$RUN.txt" 2>&1
    for server in webhook bare; do
        pid=$(cat "$work/$server.$RUN.pid")
        callgrind_control -d "$pid" > /dev/null 2>&1
        kill -9 "$pid"
        total=$(sed -n 's/^summary: //p' "$work/$server.$RUN.out.1")
        serving=$(callgrind_annotate --inclusive=yes "$work/$server.$RUN.out.1" 2>/dev/null |
            awk '/Dispatcher<D,Bs,I,T>::poll_catch \[/ { gsub(",", "", $1); print $1; exit }')
        sent=$(awk -v s="$server" -v w="$1" '$1 == w && $2 == s { n += $4 } END { print n }' "$work/$RUN.txt")
        echo "$server $total ${serving:-0} $sent"
    done
}

for workload in ${@:-deployment prefetch-default prefetch-validate pod-gate pod-pass}; do
    run "$workload" 2 | sort > "$work/short"
    run "$workload" 6 | sort > "$work/long"
    # Joined: server, then process, serving and requests of the short run, then of the long.
    join "$work/short" "$work/long" | awk -v w="$workload" '
        { process[$1] = ($5 - $2) / ($7 - $4); serving[$1] = ($6 - $3) / ($7 - $4) }
        END {
            printf "%s serving: webhook %.0f, bare %.0f instructions per request (webhook %.2fx bare)\n",
                w, serving["webhook"], serving["bare"], serving["webhook"] / serving["bare"]
            printf "%s process: webhook %.0f, bare %.0f\n", w, process["webhook"], process["bare"]
        }'
done
