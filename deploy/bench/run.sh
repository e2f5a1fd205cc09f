#!/bin/bash
# deploy/bench/run.sh: dmarc-milter against the Debian reference
# (OpenDKIM in verify mode, then OpenDMARC, chained as Postfix chains
# them), under the same load from cmd/milter-load: first speaking milter
# to the daemons, then through a private Postfix in front of each setup.
# Debian 12, as root; about 2 minutes with the defaults.
#
#   deploy/bench/run.sh                  # defaults: 16 connections, 2 rounds of 12 s each
#   DURATION=20s ROUNDS=3 CONNS=32 deploy/bench/run.sh
#
# Every daemon runs in one network namespace whose resolv.conf names our
# DNS test server (cmd dnstestd, serving deploy/bench/zone.json): OpenDMARC
# and libspf2 use the libc resolver, which has no other knob. The
# server's address is 10.53.0.1 on the namespace's loopback device,
# because libunbound (OpenDKIM's resolver) refuses to query 127.0.0.0/8
# by default. The bench domains are under .bench, not .test: libunbound
# answers the RFC 6761 names itself (NXDOMAIN), and lifting that with
# OpenDKIM's ResolverConfiguration (an unbound config file) made OpenDKIM
# 2.11 log config syntax errors and segfault under 16 connections. The milters listen on unix sockets, which the load tool
# reaches from outside the namespace.
#
# See README.md beside this script for what is compared and the results.
set -euo pipefail

DURATION=${DURATION:-12s}   # measured load per round and target
ROUNDS=${ROUNDS:-2}         # ours and the reference alternate, best round kept
CONNS=${CONNS:-16}          # concurrent milter connections
PERCONN=${PERCONN:-10}      # messages per connection
WARMUP=${WARMUP:-300}       # messages before each measurement (caches, JIT of nothing)
TRACE_MSGS=${TRACE_MSGS:-400} # messages sent under strace -c to count syscalls
POSTFIX=${POSTFIX:-auto}    # also run both behind a private Postfix: auto (if installed), yes, no
NS=dmarcbench
DNS_IP=10.53.0.1

repo=$(cd "$(dirname "$0")/../.." && pwd)
[ "$(id -u)" = 0 ] || { echo "run.sh: needs root (network namespace, apt)" >&2; exit 1; }

# --- packages ---------------------------------------------------------
need=()
command -v opendkim >/dev/null || need+=(opendkim)
command -v opendmarc >/dev/null || need+=(opendmarc)
command -v strace >/dev/null || need+=(strace)
[ -f /usr/share/publicsuffix/public_suffix_list.dat ] || need+=(publicsuffix)
if [ ${#need[@]} -gt 0 ]; then
	# Keep the packaged services from starting: the bench runs its own
	# instances with its own configuration.
	added_policy=
	if [ ! -e /usr/sbin/policy-rc.d ]; then
		printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
		chmod +x /usr/sbin/policy-rc.d
		added_policy=1
	fi
	apt-get -o DPkg::Lock::Timeout=300 update -qq
	DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "${need[@]}" >/dev/null
	[ -z "$added_policy" ] || rm -f /usr/sbin/policy-rc.d
	if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
		systemctl stop opendkim opendmarc 2>/dev/null || true
	fi
fi

# --- build ------------------------------------------------------------
work=$(mktemp -d /tmp/dmarc-bench.XXXXXX)
chmod 755 "$work"
pids=()
pfdir=
cleanup() {
	if [ -n "$pfdir" ]; then postfix -c "$pfdir/etc" stop >/dev/null 2>&1 || true; fi
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
	ip netns del "$NS" 2>/dev/null || true
	rm -rf "/etc/netns/$NS"
	[ -n "${KEEP:-}" ] || rm -rf "$work"
}
trap cleanup EXIT

echo "== building into $work"
(cd "$repo" && go build -o "$work/dmarc-milter" ./cmd/dmarc-milter &&
	go build -o "$work/milter-load" ./cmd/milter-load &&
	go build -o "$work/dnstestd" ./internal/dnstest/cmd/dnstestd)

# --- namespace and DNS --------------------------------------------------
ip netns del "$NS" 2>/dev/null || true
ip netns add "$NS"
ip -n "$NS" link set lo up
ip -n "$NS" addr add "$DNS_IP/32" dev lo
mkdir -p "/etc/netns/$NS"
echo "nameserver $DNS_IP" >"/etc/netns/$NS/resolv.conf"

# start NAME READY-TEST CMD...: runs CMD in the namespace and waits until
# READY-TEST passes. ip netns exec execs CMD (no fork), and a simple
# command in the background is not wrapped in a subshell, so $! is the
# daemon itself: its /proc entries are what is measured.
start() {
	local name=$1 ready=$2
	shift 2
	ip netns exec "$NS" "$@" >"$work/$name.log" 2>&1 &
	pids+=($!)
	eval "pid_$name=$!"
	for _ in $(seq 100); do
		if eval "$ready"; then return 0; fi
		if ! kill -0 "$!" 2>/dev/null; then break; fi
		sleep 0.1
	done
	echo "run.sh: $name did not start:" >&2
	cat "$work/$name.log" >&2
	exit 1
}

start dns "grep -q listening '$work/dns.log'" \
	"$work/dnstestd" -listen "$DNS_IP:53" -zone "$repo/deploy/bench/zone.json" -keys "$repo/testdata/keys"

# --- the milters ----------------------------------------------------------
# Same authserv-id everywhere: OpenDMARC must trust OpenDKIM's header.
# Logging is off (ours at warn): the filter work is compared, not syslog.
cat >"$work/opendkim.conf" <<EOF
Mode                v
Socket              local:$work/opendkim.sock
AuthservID          bench.mx
Nameservers         $DNS_IP
Syslog              no
UserID              root
UMask               000
Background          no
AlwaysAddARHeader   yes
EOF
cat >"$work/opendmarc.conf" <<EOF
Socket                  local:$work/opendmarc.sock
AuthservID              bench.mx
TrustedAuthservIDs      bench.mx
SPFSelfValidate         true
SPFIgnoreResults        true
RejectFailures          true
HoldQuarantinedMessages true
FailureReports          false
PublicSuffixList        /usr/share/publicsuffix/public_suffix_list.dat
Syslog                  false
UserID                  root
UMask                   000
EOF

start ours "[ -S '$work/ours.sock' ]" \
	"$work/dmarc-milter" serve -listen "unix:$work/ours.sock" -socket-mode 0666 -dns "$DNS_IP:53" \
	-authserv-id bench.mx -quarantine hold -log-level warn
start opendkim "[ -S '$work/opendkim.sock' ]" opendkim -f -x "$work/opendkim.conf"
start opendmarc "[ -S '$work/opendmarc.sock' ]" opendmarc -f -c "$work/opendmarc.conf"

if [ -n "${SETUP_ONLY:-}" ]; then
	# For poking at the daemons by hand: Ctrl-C tears everything down.
	echo "ours: unix:$work/ours.sock  opendkim: unix:$work/opendkim.sock  opendmarc: unix:$work/opendmarc.sock"
	echo "load tool: $work/milter-load -keys $repo/testdata/keys; logs in $work"
	sleep infinity &
	pids+=($!)
	wait $! || true
	exit 0
fi

OURS=(-milter "unix:$work/ours.sock")
REF=(-milter "unix:$work/opendkim.sock" -milter "unix:$work/opendmarc.sock")

# cpu_ticks PID...: utime+stime of all threads, in clock ticks.
cpu_ticks() {
	local t=0 p
	for p in "$@"; do
		# Fields 14 and 15 after the ")" that ends the command name.
		t=$((t + $(sed 's/^.*) //' "/proc/$p/stat" | awk '{print $12 + $13}')))
	done
	echo "$t"
}
rss_kb() {
	local t=0 p
	for p in "$@"; do t=$((t + $(awk '/^VmRSS:/ {print $2}' "/proc/$p/status"))); done
	echo "$t"
}
hwm_kb() {
	local t=0 p
	for p in "$@"; do t=$((t + $(awk '/^VmHWM:/ {print $2}' "/proc/$p/status"))); done
	echo "$t"
}
kv() { sed -n "s/.*\b$1=\([^ ]*\).*/\1/p" <<<"$2"; }
HZ=$(getconf CLK_TCK)

# alive PID...: a daemon that died under load ends the bench, with its log.
alive() {
	local p
	for p in "$@"; do
		if ! kill -0 "$p" 2>/dev/null; then
			echo "run.sh: daemon $p died; logs:" >&2
			tail -n 5 "$work"/*.log >&2
			KEEP=1
			exit 1
		fi
	done
}

# measure LABEL "PIDS" ARGS...: one warm-up, one measured run; prints a
# result line and sets RESULT. Exit status 2 of milter-load (unexpected
# actions or errors) is kept in the line: a broken run must be visible.
measure() {
	local label=$1 pidlist=$2
	shift 2
	"$work/milter-load" "$@" -keys "$repo/testdata/keys" -c "$CONNS" -m "$PERCONN" -n "$WARMUP" -d 0 -format kv >/dev/null || true
	local t0 t1 out rc=0
	alive $pidlist
	t0=$(cpu_ticks $pidlist)
	out=$("$work/milter-load" "$@" -keys "$repo/testdata/keys" -c "$CONNS" -m "$PERCONN" -d "$DURATION" -count-io -format kv) || rc=$?
	t1=$(cpu_ticks $pidlist)
	alive $pidlist
	local msgs cpu_us
	msgs=$(kv msgs "$out")
	cpu_us=$(awk -v d=$((t1 - t0)) -v hz="$HZ" -v n="$msgs" 'BEGIN { printf "%.0f", n ? d * 1e6 / hz / n : 0 }')
	RESULT="$out cpu_us_per_msg=$cpu_us rss_kb=$(rss_kb $pidlist) hwm_kb=$(hwm_kb $pidlist) exit=$rc"
	echo "$label: $RESULT"
	if [ "$rc" != 0 ]; then
		# Say which messages went wrong, from a short run.
		"$work/milter-load" "$@" -keys "$repo/testdata/keys" -c 2 -n 60 -d 0 | grep -E '^(unexpected|errors|  )' | sed 's/^/    /' || true
	fi
}

# syscalls LABEL "PIDS" ARGS...: strace -c on every thread of the daemons
# for TRACE_MSGS messages; sets SYSCALLS (per message).
syscalls() {
	local label=$1 pidlist=$2
	shift 2
	local tp=() p i=0
	for p in $pidlist; do
		strace -c -f -p "$p" -o "$work/strace.$label.$i" 2>/dev/null &
		tp+=($!)
		i=$((i + 1))
	done
	sleep 0.5
	"$work/milter-load" "$@" -keys "$repo/testdata/keys" -c "$CONNS" -m "$PERCONN" -n "$TRACE_MSGS" -d 0 -format kv >/dev/null || true
	for p in "${tp[@]}"; do kill -INT "$p" 2>/dev/null || true; done
	for p in "${tp[@]}"; do wait "$p" 2>/dev/null || true; done
	SYSCALLS=$(cat "$work"/strace."$label".* | awk -v n="$TRACE_MSGS" '$NF == "total" { c += $4 } END { printf "%.1f", c / n }')
	echo "$label: syscalls per message (strace -c -f, $TRACE_MSGS messages): $SYSCALLS"
}

echo "== $(date -u '+%Y-%m-%d %H:%M UTC'); $(nproc) cores, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)"
echo "== $CONNS connections x $PERCONN messages each, $DURATION per run, $ROUNDS rounds, warm-up $WARMUP messages"
best_ours= best_ref=
for r in $(seq "$ROUNDS"); do
	measure "round $r ours     " "$pid_ours" "${OURS[@]}"
	if [ -z "$best_ours" ] || awk -v a="$(kv rate "$RESULT")" -v b="$(kv rate "$best_ours")" 'BEGIN { exit !(a > b) }'; then best_ours=$RESULT; fi
	measure "round $r reference" "$pid_opendkim $pid_opendmarc" "${REF[@]}"
	if [ -z "$best_ref" ] || awk -v a="$(kv rate "$RESULT")" -v b="$(kv rate "$best_ref")" 'BEGIN { exit !(a > b) }'; then best_ref=$RESULT; fi
done
# Each reference milter alone, for where the cost goes. OpenDMARC alone
# lacks OpenDKIM's header, so its DKIM-dependent verdicts differ
# (unexpected > 0 is normal there).
measure "opendkim alone    " "$pid_opendkim" -milter "unix:$work/opendkim.sock"
dkim_alone=$RESULT
measure "opendmarc alone   " "$pid_opendmarc" -milter "unix:$work/opendmarc.sock"
dmarc_alone=$RESULT

syscalls ours "$pid_ours" "${OURS[@]}"
sys_ours=$SYSCALLS
syscalls reference "$pid_opendkim $pid_opendmarc" "${REF[@]}"
sys_ref=$SYSCALLS

for v in best_ours best_ref; do
	res=${!v}
	if [ "$(kv errors "$res")" != 0 ] || [ "$(kv unexpected "$res")" != 0 ]; then
		echo "run.sh: $v run is broken (errors or unexpected actions): $res" >&2
		KEEP=1
		exit 2
	fi
done

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0) print "n/a"; else printf "%.2f", a / b }'; }
row() { printf '%-28s %12s %12s %8s\n' "$1" "$2" "$3" "$(ratio "$2" "$3")"; }
echo
echo "== best round of each (ours = dmarc-milter; reference = opendkim -> opendmarc chain)"
printf '%-28s %12s %12s %8s\n' metric ours reference ours/ref
row "throughput msg/s" "$(kv rate "$best_ours")" "$(kv rate "$best_ref")"
row "latency p50 us" "$(kv p50_us "$best_ours")" "$(kv p50_us "$best_ref")"
row "latency p90 us" "$(kv p90_us "$best_ours")" "$(kv p90_us "$best_ref")"
row "latency p99 us" "$(kv p99_us "$best_ours")" "$(kv p99_us "$best_ref")"
row "CPU us/msg (daemons)" "$(kv cpu_us_per_msg "$best_ours")" "$(kv cpu_us_per_msg "$best_ref")"
row "RSS kB after load" "$(kv rss_kb "$best_ours")" "$(kv rss_kb "$best_ref")"
row "peak RSS kB" "$(kv hwm_kb "$best_ours")" "$(kv hwm_kb "$best_ref")"
row "syscalls/msg (daemons)" "$sys_ours" "$sys_ref"
row "milter packets/msg" "$(kv pkts_per_msg "$best_ours")" "$(kv pkts_per_msg "$best_ref")"
row "client socket ops/msg" "$(kv sockops_per_msg "$best_ours")" "$(kv sockops_per_msg "$best_ref")"
echo
echo "reference parts: opendkim alone cpu_us_per_msg=$(kv cpu_us_per_msg "$dkim_alone") rate=$(kv rate "$dkim_alone");" \
	"opendmarc alone cpu_us_per_msg=$(kv cpu_us_per_msg "$dmarc_alone") rate=$(kv rate "$dmarc_alone")"
echo "actions ours:      accept=$(kv accept "$best_ours") quarantine=$(kv quarantine "$best_ours") reject=$(kv reject "$best_ours") tempfail=$(kv tempfail "$best_ours")"
echo "actions reference: accept=$(kv accept "$best_ref") quarantine=$(kv quarantine "$best_ref") reject=$(kv reject "$best_ref") tempfail=$(kv tempfail "$best_ref")"

# --- behind Postfix ----------------------------------------------------------
# A private Postfix instance in the namespace, one smtpd per setup, mail
# discarded after the queue. The load tool speaks SMTP with XCLIENT to
# claim each client's address, so Postfix's own milter client (protocol
# 6, its negotiation, its header handling) is in the measurement. Postfix
# queues every message (cleanup writes and syncs the queue file), which
# both setups pay alike.
if [ "$POSTFIX" = no ] || { [ "$POSTFIX" = auto ] && ! command -v postfix >/dev/null; }; then
	echo
	echo "(no Postfix run: POSTFIX=$POSTFIX)"
	exit 0
fi
pfdir=$work/postfix
mkdir -p "$pfdir/etc" "$pfdir/queue" "$pfdir/data"
chown postfix:postfix "$pfdir/data"
cat >"$pfdir/etc/main.cf" <<EOF
compatibility_level = 3.6
queue_directory = $pfdir/queue
data_directory = $pfdir/data
myhostname = mx.bench.test
mydestination =
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_authorized_xclient_hosts = 127.0.0.0/8
smtpd_peername_lookup = no
smtp_dns_support_level = disabled
biff = no
alias_maps =
alias_database =
local_recipient_maps =
relay_domains = lab.test
relay_recipient_maps =
relay_transport = discard:bench
maillog_file = $pfdir/maillog
maillog_file_prefixes = $pfdir
milter_protocol = 6
milter_default_action = tempfail
milter_content_timeout = 60s
EOF
cat >"$pfdir/etc/master.cf" <<EOF
127.0.0.1:2525 inet n - n - - smtpd
  -o syslog_name=postfix/ours
  -o smtpd_milters=unix:$work/ours.sock
127.0.0.1:2526 inet n - n - - smtpd
  -o syslog_name=postfix/reference
  -o smtpd_milters=unix:$work/opendkim.sock,unix:$work/opendmarc.sock
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
proxymap  unix  -       -       n       -       -       proxymap
postlog   unix-dgram n  -       n       -       1       postlogd
EOF
if ! ip netns exec "$NS" postfix -c "$pfdir/etc" start >"$work/postfix.log" 2>&1; then
	echo "run.sh: postfix did not start:" >&2
	cat "$work/postfix.log" "$pfdir/maillog" >&2 2>/dev/null
	KEEP=1
	exit 1
fi
for port in 2525 2526; do
	for _ in $(seq 50); do
		ip netns exec "$NS" bash -c "exec 3<>/dev/tcp/127.0.0.1/$port" 2>/dev/null && break
		sleep 0.1
	done
done

# measure_smtp LABEL PORT "PIDS": like measure, through Postfix.
measure_smtp() {
	local label=$1 port=$2 pidlist=$3
	local load=(ip netns exec "$NS" "$work/milter-load" -smtp "127.0.0.1:$port" -keys "$repo/testdata/keys" -c "$CONNS" -m "$PERCONN")
	"${load[@]}" -n "$WARMUP" -d 0 -format kv >/dev/null || true
	alive $pidlist
	local t0 t1 out rc=0
	t0=$(cpu_ticks $pidlist)
	out=$("${load[@]}" -d "$DURATION" -format kv) || rc=$?
	t1=$(cpu_ticks $pidlist)
	alive $pidlist
	local cpu_us
	cpu_us=$(awk -v d=$((t1 - t0)) -v hz="$HZ" -v n="$(kv msgs "$out")" 'BEGIN { printf "%.0f", n ? d * 1e6 / hz / n : 0 }')
	RESULT="$out milter_cpu_us_per_msg=$cpu_us exit=$rc"
	echo "$label: $RESULT"
	if [ "$rc" != 0 ]; then
		"${load[@]}" -c 2 -n 60 -d 0 | grep -E '^(unexpected|errors|  )' | sed 's/^/    /' || true
		tail -n 5 "$pfdir/maillog" | sed 's/^/    maillog: /'
	fi
}

echo
echo "== behind Postfix $(postconf -d -h mail_version) (SMTP with XCLIENT, mail discarded after the queue)"
measure_smtp "postfix + ours     " 2525 "$pid_ours"
pf_ours=$RESULT
measure_smtp "postfix + reference" 2526 "$pid_opendkim $pid_opendmarc"
pf_ref=$RESULT
printf '%-28s %12s %12s %8s\n' metric ours reference ours/ref
row "throughput msg/s" "$(kv rate "$pf_ours")" "$(kv rate "$pf_ref")"
row "latency p50 us" "$(kv p50_us "$pf_ours")" "$(kv p50_us "$pf_ref")"
row "latency p90 us" "$(kv p90_us "$pf_ours")" "$(kv p90_us "$pf_ref")"
row "latency p99 us" "$(kv p99_us "$pf_ours")" "$(kv p99_us "$pf_ref")"
row "milter CPU us/msg" "$(kv milter_cpu_us_per_msg "$pf_ours")" "$(kv milter_cpu_us_per_msg "$pf_ref")"
for v in pf_ours pf_ref; do
	res=${!v}
	if [ "$(kv errors "$res")" != 0 ] || [ "$(kv unexpected "$res")" != 0 ]; then
		echo "run.sh: $v run is broken (errors or unexpected actions): $res" >&2
		KEEP=1
		exit 2
	fi
done
