#!/usr/bin/env bash
# Object store put/get benchmark (issue 7): vmprep's internal/objectstore against
# nats.go's own jetstream.ObjectStore and against curl fetching the same file
# from a plain HTTP server, on loopback, with a real nats-server built from
# go.mod's version: one node (R1) and a three-node cluster on 127.0.0.1 (R3).
#
#   bench/objectstore/run.sh                       # 3 rounds, 1 GiB, R1 and R3, plus a 4 GiB RSS check
#   RUNS=5 REPLICAS="1" BIG_MIB=0 bench/objectstore/run.sh
#   SWEEP=1 bench/objectstore/run.sh               # also a chunk x window sweep of ours at R1
#
# Each round runs the contenders in a rotated order (ours, nats.go, curl;
# then nats.go, curl, ours; ...). A contender's put and get are separate
# processes (bench/objectstore, -mode put then -mode get), each under GNU
# time: MB/s is the driver's own timing of the transfer; client RSS and CPU
# (user+sys) are the whole process's. curl writes to /dev/null (-s -o
# /dev/null) from bench/fetch/serve (Go, http.ServeContent). Server RSS is
# the peak (VmHWM, reset through /proc/PID/clear_refs before each operation)
# of the nats-server node with the highest peak, or of the HTTP server for
# curl. Everything is written under $TMPDIR and removed, servers are
# stopped on exit.
set -euo pipefail

RUNS=${RUNS:-3}
SIZE_MIB=${SIZE_MIB:-1024}
BIG_MIB=${BIG_MIB:-4096}
REPLICAS=${REPLICAS:-1 3}
SWEEP=${SWEEP:-0}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/objbench.XXXXXX")
PIDS=()
stop_servers() {
	local p
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
	PIDS=()
}
cleanup() {
	stop_servers
	if [[ -n ${HTTP_PID:-} ]]; then kill "$HTTP_PID" 2>/dev/null || true; wait "$HTTP_PID" 2>/dev/null || true; fi
	rm -rf "$WORK"
}
trap cleanup EXIT

[[ -x /usr/bin/time ]] || { echo "need GNU time: apt-get install -y time" >&2; exit 1; }
command -v curl >/dev/null || { echo "need curl" >&2; exit 1; }

echo "building nats-server (go.mod's version), bench/objectstore, bench/fetch/serve" >&2
(cd "$ROOT" && go build -o "$WORK/nats-server" github.com/nats-io/nats-server/v2 &&
	go build -o "$WORK/osbench" ./bench/objectstore && go build -o "$WORK/serve" ./bench/fetch/serve)

mkfile() { # NAME MIB: incompressible data
	echo "creating $2 MiB of random data" >&2
	head -c "$(($2 << 20))" /dev/urandom >"$WORK/$1"
}
mkfile blob "$SIZE_MIB"
SUM=$(sha256sum "$WORK/blob" | cut -d' ' -f1)

"$WORK/serve" -file "$WORK/blob" >"$WORK/url" 2>"$WORK/serve.log" &
HTTP_PID=$!
for _ in $(seq 50); do [[ -s $WORK/url ]] && break; sleep 0.1; done
URL=$(cat "$WORK/url")

# Ports: a random base, so that two runs on one machine do not collide.
BASE=${PORT_BASE:-$((20000 + RANDOM % 20000))}
URLS=
MONITORS=()
start_servers() { # R: R=1 one node, else an R-node cluster
	local r=$1 i routes=
	URLS=
	MONITORS=()
	for ((i = 0; i < r; i++)); do routes+="${routes:+,}nats-route://127.0.0.1:$((BASE + 10 * i + 1))"; done
	for ((i = 0; i < r; i++)); do
		local args=(-a 127.0.0.1 -p $((BASE + 10 * i)) -n "n$((i + 1))" -js -sd "$WORK/js-r$r-n$i" -m $((BASE + 10 * i + 2)))
		if ((r > 1)); then args+=(--cluster_name bench --cluster "nats://127.0.0.1:$((BASE + 10 * i + 1))" --routes "$routes"); fi
		"$WORK/nats-server" "${args[@]}" >>"$WORK/nats-n$i.log" 2>&1 &
		PIDS+=($!)
		URLS+="${URLS:+,}nats://127.0.0.1:$((BASE + 10 * i))"
		MONITORS+=("http://127.0.0.1:$((BASE + 10 * i + 2))")
	done
	local ok
	for _ in $(seq 300); do
		ok=1
		for m in "${MONITORS[@]}"; do curl -sf "$m/healthz" >/dev/null 2>&1 || ok=0; done
		if ((ok && r > 1)); then
			[[ $(curl -sf "${MONITORS[0]}/jsz" | jq -r '.meta_cluster.leader // ""' 2>/dev/null) != "" ]] || ok=0
			[[ $(curl -sf "${MONITORS[0]}/jsz" | jq -r '.meta_cluster.cluster_size // 0' 2>/dev/null) == "$r" ]] || ok=0
		fi
		((ok)) && break
		sleep 0.1
	done
	((ok)) || { echo "nats-server (R$r) did not become ready" >&2; cat "$WORK"/nats-n*.log >&2; exit 1; }
	sleep 1
}

reset_hwm() { local p; for p in "$@"; do echo 5 >"/proc/$p/clear_refs" 2>/dev/null || true; done; }
max_hwm_kb() { # the highest VmHWM among pids, in KiB
	local p m=0 v
	for p in "$@"; do
		v=$(awk '/^VmHWM:/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)
		((v > m)) && m=$v
	done
	echo "$m"
}

# Results: one line per timed operation in $WORK/results:
#   label replicas contender op MB/s client_rss_kb client_cpu_s server_rss_kb
record() { echo "$*" >>"$WORK/results"; }

# osop LABEL R IMPL OP FILE SUM BUCKET [driver flags...]
osop() {
	local label=$1 r=$2 impl=$3 op=$4 file=$5 sum=$6 bucket=$7
	shift 7
	sync -f "$WORK"
	reset_hwm "${PIDS[@]}"
	if ! /usr/bin/time -f "%M %U %S" -o "$WORK/time" "$WORK/osbench" -nats "$URLS" -file "$file" -sha256 "$sum" \
		-replicas "$r" -impl "$impl" -mode "$op" -bucket "$bucket" "$@" >"$WORK/line" 2>"$WORK/err"; then
		# A failed transfer is a result too (nats.go's put can overflow the
		# server's stream ingest queue: 429 "too many requests").
		echo "R$r $impl $op failed: $(tail -1 "$WORK/err")" | tee -a "$WORK/failures" >&2
		record "$label" "$r" "$impl" "$op" FAIL 0 0 "$(max_hwm_kb "${PIDS[@]}")"
		return 1
	fi
	local mbps rss cpu
	mbps=$(cut -d' ' -f5 "$WORK/line")
	read -r rss cpu < <(awk '{printf "%s %.2f\n", $1, $2 + $3}' "$WORK/time")
	record "$label" "$r" "$impl" "$op" "$mbps" "$rss" "$cpu" "$(max_hwm_kb "${PIDS[@]}")"
}
run_os() { # LABEL R IMPL FILE SUM [driver flags...]: put, get, delete the bucket
	local label=$1 r=$2 impl=$3 file=$4 sum=$5
	shift 5
	local bucket="b$RANDOM"
	if osop "$label" "$r" "$impl" put "$file" "$sum" "$bucket" "$@"; then
		osop "$label" "$r" "$impl" get "$file" "$sum" "$bucket" "$@" || true
	fi
	"$WORK/osbench" -nats "$URLS" -mode delete -bucket "$bucket"
}
run_curl() { # LABEL R
	sync -f "$WORK"
	reset_hwm "$HTTP_PID"
	/usr/bin/time -f "%M %U %S" -o "$WORK/time" curl -s -o /dev/null -w '%{size_download} %{time_total}\n' "$URL" >"$WORK/line"
	local mbps rss cpu
	mbps=$(awk '{printf "%.1f", $1 / $2 / 1e6}' "$WORK/line")
	read -r rss cpu < <(awk '{printf "%s %.2f\n", $1, $2 + $3}' "$WORK/time")
	record "$1" "$2" curl get "$mbps" "$rss" "$cpu" "$(max_hwm_kb "$HTTP_PID")"
}
contender() { # NAME LABEL R
	case $1 in
	ours) run_os "$2" "$3" ours "$WORK/blob" "$SUM" ;;
	natsgo) run_os "$2" "$3" natsgo "$WORK/blob" "$SUM" ;;
	curl) run_curl "$2" "$3" ;;
	esac
}

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
ORDER=(ours natsgo curl)
for r in $REPLICAS; do
	start_servers "$r"
	echo "R$r: warm-up (untimed): one put+get of ours and of nats.go, one curl" >&2
	run_os warmup "$r" ours "$WORK/blob" "$SUM"
	run_os warmup "$r" natsgo "$WORK/blob" "$SUM"
	run_curl warmup "$r"
	for ((k = 0; k < RUNS; k++)); do
		echo "R$r round $((k + 1))/$RUNS, load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
		for ((j = 0; j < ${#ORDER[@]}; j++)); do contender "${ORDER[(j + k) % ${#ORDER[@]}]}" "${SIZE_MIB}MiB" "$r"; done
	done
	if ((SWEEP && r == 1)); then
		for chunk in 131072 262144 524288; do
			for window in 4 16 64; do
				echo "R1 sweep: chunk $chunk window $window" >&2
				run_os "sweep-c$((chunk >> 10))K-w$window" 1 ours "$WORK/blob" "$SUM" -chunk "$chunk" -window "$window"
			done
		done
	fi
	stop_servers
	rm -rf "$WORK"/js-r*
done
LOAD_MID=$(cut -d' ' -f1-3 /proc/loadavg)

if ((BIG_MIB > 0)); then
	rm -f "$WORK/blob"
	mkfile big "$BIG_MIB"
	BIGSUM=$(sha256sum "$WORK/big" | cut -d' ' -f1)
	for r in $REPLICAS; do
		start_servers "$r"
		echo "R$r: ${BIG_MIB} MiB put+get for peak RSS, ours then nats.go" >&2
		run_os "${BIG_MIB}MiB" "$r" ours "$WORK/big" "$BIGSUM"
		run_os "${BIG_MIB}MiB" "$r" natsgo "$WORK/big" "$BIGSUM"
		stop_servers
		rm -rf "$WORK"/js-r*
	done
fi

echo
echo "$(nproc) cores; load average at start $LOAD_START, after the ${SIZE_MIB} MiB rounds $LOAD_MID, at end $(cut -d' ' -f1-3 /proc/loadavg)"
echo "MB/s: median over runs (all runs); client RSS and server RSS: highest peak; client CPU: median user+sys"
grep -v '^warmup' "$WORK/results" | sort -k1,1 -k2,2n -k3,3 -k4,4r | awk '
function median(s,   a, n, i, j, t) {
	n = split(s, a, " ")
	for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j-1] + 0 > a[j] + 0; j--) { t = a[j]; a[j] = a[j-1]; a[j-1] = t }
	return n % 2 ? a[(n+1)/2] : (a[n/2] + a[n/2+1]) / 2
}
{
	k = $1 " R" $2 " " $3 " " $4
	if (!(k in mb)) { order[++nk] = k; mb[k] = "" }
	if ($5 == "FAIL") { fail[k]++; if ($8 > srss[k]) srss[k] = $8; next }
	mb[k] = mb[k] (mb[k] == "" ? "" : " ") $5
	cpu[k] = cpu[k] (cpu[k] == "" ? "" : " ") $7
	if ($6 > crss[k]) crss[k] = $6
	if ($8 > srss[k]) srss[k] = $8
}
END {
	printf "%-34s %9s %-30s %11s %11s %12s\n", "size replicas contender op", "MB/s", "(runs)", "client RSS", "client CPU", "server RSS"
	for (i = 1; i <= nk; i++) {
		k = order[i]
		runs = "(" mb[k] (fail[k] ? (mb[k] == "" ? "" : "; ") fail[k] " failed" : "") ")"
		if (mb[k] == "") { printf "%-34s %9s %-30s %11s %11s %8.1f MiB\n", k, "-", runs, "-", "-", srss[k] / 1024; continue }
		printf "%-34s %9.0f %-30s %7.1f MiB %9.2f s %8.1f MiB\n", k, median(mb[k]), runs, crss[k] / 1024, median(cpu[k]), srss[k] / 1024
		med[k] = median(mb[k])
	}
	print ""
	for (i = 1; i <= nk; i++) {
		k = order[i]; split(k, f, " ")
		if (f[3] != "ours" || !(k in med)) continue
		c = f[1] " " f[2] " curl get"; g = f[1] " " f[2] " natsgo " f[4]
		line = sprintf("%s: ours %s", f[1] " " f[2] " " f[4], med[k])
		if (c in med) line = line sprintf("  ours/curl %.2fx", med[k] / med[c])
		if (g in med) line = line sprintf("  ours/nats.go %.2fx", med[k] / med[g])
		print line " (MB/s ratios; >1 is faster)"
	}
}'
if [[ -s $WORK/failures ]]; then
	echo
	echo "failed transfers ($(wc -l <"$WORK/failures")):"
	sort "$WORK/failures" | uniq -c
fi
echo "nats-server log: $(cat "$WORK"/nats-n*.log | grep -c 'excessive stream ingest rate' || true) warnings of dropped messages (excessive stream ingest rate)"
