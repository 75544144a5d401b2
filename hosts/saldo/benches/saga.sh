#!/usr/bin/env bash
# The whole saga against the database's own rate, measured in one run.
#
#   bash hosts/saldo/benches/saga.sh
#
# 1. builds `saldo` (release), creates a fresh database and migrates it;
# 2. starts the topology of production mode on loopback: `saldo broker`,
#    the order, inventory and payment services (each with its HTTP API) and
#    the three outbox publishers, each logging to a file in a temporary
#    directory;
# 3. runs pgbench with one transaction per order as the database sees it at
#    placement: one row shaped like orders.orders and one like orders.outbox,
#    in scratch tables copied from those two (same column types, constraints
#    and indexes), durable commits. That is the ceiling a saga cannot beat:
#    each order writes those two rows and more;
# 4. runs `saldo load` as fast as it goes, then again at half the rate it
#    reached, for the latency at a load the platform can carry;
# 5. prints one summary, then stops everything it started and drops the
#    database (trap on EXIT, also on failure; the logs stay when it fails).
#
# Settings (environment):
#   SALDO_BENCH_DATABASE_URL     an admin URL of a role with CREATEDB
#                                (default: tests/run.sh's saldo_test role,
#                                sslmode=disable)
#   SALDO_BENCH_ORDERS           orders in the as-fast-as-it-goes run (5000)
#   SALDO_BENCH_PGBENCH_SECONDS  pgbench duration (15)
#   SALDO_BENCH_HALF_RATE_SECONDS  length of the half-rate run (20)
#   SALDO_BENCH_AFTER_MIGRATE_SQL  a file of SQL run as the admin role right
#                                after the migration, for what-if experiments
#                                (drop a trigger, change a setting); figures so
#                                measured are the experiment's, not Saldo's (off)
#   SALDO_BENCH_PROFILE          a directory: record every Saldo process with
#                                `perf record` during the as-fast-as-it-goes
#                                run, one PROCESS.perf.data each (off)
#   SALDO_BENCH_TRACES           1: every process exports its spans over OTLP
#                                (ADR 0020) to a sink on loopback that answers
#                                every export with 200 and counts the bytes,
#                                for the cost of tracing (off: nothing exported)
set -euo pipefail

readonly ORDERS=${SALDO_BENCH_ORDERS:-5000}
readonly PGBENCH_SECONDS=${SALDO_BENCH_PGBENCH_SECONDS:-15}
readonly HALF_RATE_SECONDS=${SALDO_BENCH_HALF_RATE_SECONDS:-20}
# sslmode=disable: the server is on loopback, where TLS (sqlx's and libpq's
# default `prefer` takes it whenever the server has ssl = on) encrypts every
# statement for nothing and halved the saga's rate (docs/benchmarks.md).
# pgbench and the services use the same URL, so both sides pay the same.
readonly ADMIN_URL=${SALDO_BENCH_DATABASE_URL:-postgres://saldo_test:saldo_test@127.0.0.1:5432/postgres?sslmode=disable}
# pgbench clients, and saldo load's connections in the as-fast-as-it-goes run.
readonly PGBENCH_CLIENTS=16
readonly PGBENCH_THREADS=2
readonly LOAD_CONNECTIONS=32
readonly LOAD_CUSTOMERS=1000
readonly LOAD_SKUS=100
# The most orders `saldo load` takes in one run (its ORDERS_MAX).
readonly LOAD_ORDERS_MAX=1000000
# How long every order of a run may take to end, after placing.
readonly LOAD_WAIT_SECONDS=300
# Sizes of the scratch rows, near what a placed order writes (measured on
# orders.orders.body and orders.outbox.envelope after a run).
readonly ORDER_BODY_PADDING_BYTES=900
readonly ENVELOPE_BYTES=450
# Bounded waits, in tenths of a second.
readonly BROKER_WAIT_TENTHS=300
readonly READY_WAIT_TENTHS=600
readonly STOP_WAIT_TENTHS=100
readonly PORT_ATTEMPTS_MAX=50

fail() {
    echo "saga.sh: $*" >&2
    exit 1
}

for tool in cargo psql pgbench curl; do
    command -v "$tool" >/dev/null || fail "needs $tool on PATH"
done
for number in "$ORDERS" "$PGBENCH_SECONDS" "$HALF_RATE_SECONDS"; do
    [[ $number =~ ^[1-9][0-9]*$ ]] || fail "settings must be positive integers, not '$number'"
done
# The benchmark creates and drops a database: only on this machine.
[[ $ADMIN_URL =~ @(127\.0\.0\.1|localhost|\[::1\])(:[0-9]+)?/ ]] ||
    fail "SALDO_BENCH_DATABASE_URL must point at a loopback address"

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)
saldo="${CARGO_TARGET_DIR:-$root/target}/release/saldo"
work=$(mktemp -d "${TMPDIR:-/tmp}/saldo-bench.XXXXXX")
database="saldo_bench_$$"
admin_without_query=${ADMIN_URL%%\?*}
database_url="${admin_without_query%/*}/${database}${ADMIN_URL#"$admin_without_query"}"
names=()
pids=()
database_created=false
succeeded=false

stop_all() {
    set +e
    for pid in "${pids[@]}"; do
        kill -TERM "$pid" 2>/dev/null
    done
    for pid in "${pids[@]}"; do
        for _ in $(seq "$STOP_WAIT_TENTHS"); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    done
    if $database_created; then
        psql "$ADMIN_URL" -qAt -c "DROP DATABASE IF EXISTS $database WITH (FORCE)" >/dev/null
    fi
    if $succeeded; then
        rm -rf "$work"
    else
        echo "saga.sh: logs kept in $work" >&2
    fi
}
trap stop_all EXIT

# A loopback port nobody listens on: a random one that refuses a connection.
free_port() {
    local port
    for _ in $(seq "$PORT_ATTEMPTS_MAX"); do
        port=$((20000 + RANDOM % 40000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return
        fi
    done
    fail "no free port after $PORT_ATTEMPTS_MAX attempts"
}

# start NAME ARGS...: runs saldo in the background, its output in NAME.log.
start() {
    local name=$1
    shift
    "$saldo" "$@" >"$work/$name.log" 2>&1 &
    names+=("$name")
    pids+=($!)
}

wait_ready() {
    local name=$1 address=$2
    for _ in $(seq "$READY_WAIT_TENTHS"); do
        if curl -fsS --max-time 2 "http://$address/readyz" >/dev/null 2>&1; then
            return
        fi
        sleep 0.1
    done
    fail "$name on $address not ready after $((READY_WAIT_TENTHS / 10)) s (see $work/$name.log)"
}

# json_number KEY < JSON: the number under KEY in saldo load's one-line report.
json_number() {
    sed -n "s/.*\"$1\":\([0-9.]*\).*/\1/p"
}

echo "== building saldo (release)"
(cd "$root" && cargo build --release -p saldo)

echo "== database $database"
psql "$ADMIN_URL" -qAt -v ON_ERROR_STOP=1 -c "CREATE DATABASE $database" >/dev/null ||
    fail "cannot create a database with $ADMIN_URL (tests/run.sh creates the saldo_test role)"
database_created=true
"$saldo" migrate --database-url "$database_url" >"$work/migrate.log" 2>&1 ||
    fail "migration failed (see $work/migrate.log)"
if [[ -n ${SALDO_BENCH_AFTER_MIGRATE_SQL:-} ]]; then
    echo "== experiment: $SALDO_BENCH_AFTER_MIGRATE_SQL"
    psql "$database_url" -qAt -v ON_ERROR_STOP=1 -f "$SALDO_BENCH_AFTER_MIGRATE_SQL" >/dev/null ||
        fail "the experiment's SQL failed"
fi

if [[ ${SALDO_BENCH_TRACES:-0} == 1 ]]; then
    otlp_port=$(free_port)
    # A collector's cost is the collector's: this one only reads and counts.
    python3 - "$otlp_port" "$work/otlp-bytes" <<'PYTHON' >"$work/otlp.log" 2>&1 &
import http.server, sys, threading
port, counted = int(sys.argv[1]), sys.argv[2]
total, lock = [0, 0], threading.Lock()
class Sink(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with lock:
            total[0] += 1
            total[1] += len(body)
            with open(counted, "w") as out:
                out.write(f"{total[0]} {total[1]}\n")
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", port), Sink).serve_forever()
PYTHON
    names+=(otlp-sink)
    pids+=($!)
    export OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$otlp_port"
    echo "== traces exported to a sink on 127.0.0.1:$otlp_port"
fi

echo "== topology (logs in $work)"
"$saldo" broker >"$work/broker.log" 2>"$work/broker.err" &
names+=(broker)
pids+=($!)
bootstrap=""
for _ in $(seq "$BROKER_WAIT_TENTHS"); do
    bootstrap=$(sed -n '1s/^bootstrap //p' "$work/broker.log")
    [[ -n $bootstrap ]] && break
    sleep 0.1
done
[[ -n $bootstrap ]] || fail "the broker printed no address (see $work/broker.err)"
export SALDO_DATABASE_URL=$database_url
export SALDO_KAFKA_BOOTSTRAP=$bootstrap
export SALDO_KAFKA_CREATE_TOPICS=false
order_address="127.0.0.1:$(free_port)"
inventory_address="127.0.0.1:$(free_port)"
payment_address="127.0.0.1:$(free_port)"
start order order --http-address "$order_address"
start inventory inventory --http-address "$inventory_address"
start payment payment --http-address "$payment_address"
for service in order inventory payment; do
    start "outbox-$service" outbox --service "$service"
done
wait_ready order "$order_address"
wait_ready inventory "$inventory_address"
wait_ready payment "$payment_address"

echo "== pgbench: one order row and one outbox row per transaction, ${PGBENCH_SECONDS} s"
psql "$database_url" -qAt -v ON_ERROR_STOP=1 >/dev/null <<'SQL'
CREATE SCHEMA bench;
-- Same columns, types, constraints and indexes as Saldo's tables, but not
-- their defaults: orders.outbox's sequence stays Saldo's own.
CREATE TABLE bench.orders (LIKE orders.orders INCLUDING CONSTRAINTS INCLUDING INDEXES);
CREATE TABLE bench.outbox (LIKE orders.outbox INCLUDING CONSTRAINTS INCLUDING INDEXES);
ALTER TABLE bench.outbox ALTER COLUMN sequence ADD GENERATED BY DEFAULT AS IDENTITY;
SQL
cat >"$work/order-and-outbox.sql" <<SQL
\\set id random(1, 9000000000000000000)
BEGIN;
INSERT INTO bench.orders (order_id, version, customer_id, currency, amount_minor, status, cancel_reason, awaiting, deadline_at, body, created_at, updated_at)
VALUES ('bench-' || :client_id || '-' || :id, 1, 'c1', 'EUR', NULL, 'PENDING', NULL, 'reserve_stock', now() + interval '10 seconds',
        jsonb_build_object('customer', 'c1', 'lines', jsonb_build_array(jsonb_build_object('sku', 's1', 'quantity', 1)), 'padding', repeat('x', $ORDER_BODY_PADDING_BYTES)),
        now(), now());
INSERT INTO bench.outbox (message_id, order_id, message_type, correlation_id, traceparent, envelope, created_at)
VALUES ('message-' || :client_id || '-' || :id, 'bench-' || :client_id || '-' || :id, 'ReserveStock', 'bench',
        '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01', decode(repeat('ab', $ENVELOPE_BYTES), 'hex'), now());
END;
SQL
# Durable commits whatever the server's default: the services commit so too.
PGOPTIONS="-c synchronous_commit=on" pgbench -n -f "$work/order-and-outbox.sql" \
    -c "$PGBENCH_CLIENTS" -j "$PGBENCH_THREADS" -T "$PGBENCH_SECONDS" "$database_url" \
    >"$work/pgbench.log" 2>&1 || fail "pgbench failed (see $work/pgbench.log)"
pgbench_tps=$(sed -n 's/^tps = \([0-9.]*\) .*/\1/p' "$work/pgbench.log" | head -n 1)
[[ -n $pgbench_tps ]] || fail "no tps in pgbench's output (see $work/pgbench.log)"
psql "$database_url" -qAt -c "SET client_min_messages TO warning" -c "DROP SCHEMA bench CASCADE" >/dev/null
echo "pgbench: $pgbench_tps tps"

load() {
    local name=$1
    shift
    "$saldo" load --url "http://$order_address" --inventory-url "http://$inventory_address" \
        --payment-url "http://$payment_address" --customers "$LOAD_CUSTOMERS" --skus "$LOAD_SKUS" \
        --wait-seconds "$LOAD_WAIT_SECONDS" --json "$@" >"$work/$name.json" 2>"$work/$name.log" ||
        fail "saldo load ($name) failed: $(tail -n 1 "$work/$name.log")"
}

# cpu_ticks PID: user + system clock ticks the process has used so far.
cpu_ticks() {
    awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat" 2>/dev/null || echo 0
}
# postgres_ticks: the same for every server process connected to the
# benchmark's database (the server's own background processes, shared with
# other databases, are not counted).
postgres_ticks() {
    local total=0 pid
    for pid in $(psql "$database_url" -qAt -c "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"); do
        total=$((total + $(cpu_ticks "$pid")))
    done
    echo "$total"
}

echo "== saldo load: $ORDERS orders over $LOAD_CONNECTIONS connections, as fast as it goes"
ticks_before=()
for pid in "${pids[@]}"; do
    ticks_before+=("$(cpu_ticks "$pid")")
done
postgres_before=$(postgres_ticks)
perf_pids=()
if [[ -n ${SALDO_BENCH_PROFILE:-} ]]; then
    mkdir -p "$SALDO_BENCH_PROFILE"
    for index in "${!pids[@]}"; do
        perf record -F 499 --call-graph dwarf,8192 -o "$SALDO_BENCH_PROFILE/${names[$index]}.perf.data" \
            -p "${pids[$index]}" >/dev/null 2>&1 &
        perf_pids+=($!)
    done
    backends=$(psql "$database_url" -qAt -c "SELECT string_agg(pid::text, ',') FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()")
    perf record -F 499 -o "$SALDO_BENCH_PROFILE/postgres.perf.data" -p "$backends" >/dev/null 2>&1 &
    perf_pids+=($!)
fi
load fastest --orders "$ORDERS" --connections "$LOAD_CONNECTIONS" --seed 1
for pid in "${perf_pids[@]}"; do
    kill -INT "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null || true
done
ticks_after=()
for pid in "${pids[@]}"; do
    ticks_after+=("$(cpu_ticks "$pid")")
done
postgres_after=$(postgres_ticks)
fastest_per_second=$(json_number orders_terminal_per_second <"$work/fastest.json")
fastest_placed_per_second=$(json_number placement_per_second <"$work/fastest.json")
fastest_p50=$(json_number p50 <"$work/fastest.json")
fastest_p99=$(json_number p99 <"$work/fastest.json")
fastest_confirmed=$(json_number orders_confirmed <"$work/fastest.json")
fastest_cancelled=$(json_number orders_cancelled <"$work/fastest.json")
echo "orders terminal: $fastest_per_second/s"

half_rate=$(awk -v rate="$fastest_per_second" 'BEGIN { half = int(rate / 2); print (half < 1 ? 1 : half) }')
half_orders=$((half_rate * HALF_RATE_SECONDS))
half_orders=$((half_orders > LOAD_ORDERS_MAX ? LOAD_ORDERS_MAX : half_orders))
echo "== saldo load: $half_orders orders at $half_rate/s (half of that)"
load half --orders "$half_orders" --rate "$half_rate" --connections "$LOAD_CONNECTIONS" --seed 2
half_p50=$(json_number p50 <"$work/half.json")
half_p99=$(json_number p99 <"$work/half.json")
half_placed_per_second=$(json_number placement_per_second <"$work/half.json")

echo
echo "== summary"
if [[ ${SALDO_BENCH_TRACES:-0} == 1 ]]; then
    printf '%-44s %s\n' "traces: OTLP exports, bytes" "$(cat "$work/otlp-bytes" 2>/dev/null || echo "0 0")"
else
    printf '%-44s %s\n' "traces" "off"
fi
printf '%-44s %s\n' "PostgreSQL sessions encrypted (TLS)" "$(psql "$database_url" -qAt -c "SELECT CASE WHEN ssl THEN 'yes' ELSE 'no' END FROM pg_stat_ssl WHERE pid = pg_backend_pid()")"
printf '%-44s %s\n' "pgbench order+outbox transactions/s" "$pgbench_tps"
printf '%-44s %s\n' "saga orders terminal/s (as fast as it goes)" "$fastest_per_second"
printf '%-44s %s\n' "as fast as it goes: placed/s" "$fastest_placed_per_second"
printf '%-44s %s\n' "as fast as it goes: confirmed, cancelled" "$fastest_confirmed, $fastest_cancelled"
printf '%-44s %s\n' "as fast as it goes: latency p50, p99 (ms)" "$fastest_p50, $fastest_p99"
printf '%-44s %s\n' "saga / pgbench" "$(awk -v saga="$fastest_per_second" -v pg="$pgbench_tps" 'BEGIN { printf "%.3f", saga / pg }')"
printf '%-44s %s\n' "half rate: placed/s, requested" "$half_placed_per_second, $half_rate"
printf '%-44s %s\n' "half rate: latency p50, p99 (ms)" "$half_p50, $half_p99"
# Memory and CPU time (user + system) of every process since it started.
clock_ticks=$(getconf CLK_TCK)
for index in "${!pids[@]}"; do
    pid=${pids[$index]}
    rss=$(awk '/^VmRSS/ { print $2 " " $3 }' "/proc/$pid/status" 2>/dev/null || true)
    cpu=$(awk -v ticks="$clock_ticks" '{ sub(/^.*\) /, ""); printf "%.1f s", ($12 + $13) / ticks }' "/proc/$pid/stat" 2>/dev/null || true)
    printf '%-44s %s\n' "VmRSS, CPU ${names[$index]}" "${rss:-exited}, ${cpu:-exited}"
done
# CPU per order in the as-fast-as-it-goes run: where the two cores went.
per_order() {
    awk -v ticks="$1" -v hz="$clock_ticks" -v orders="$ORDERS" 'BEGIN { printf "%.3f ms", ticks / hz * 1000 / orders }'
}
for index in "${!pids[@]}"; do
    printf '%-44s %s\n' "CPU per order, fastest run: ${names[$index]}" \
        "$(per_order $((ticks_after[index] - ticks_before[index])))"
done
printf '%-44s %s\n' "CPU per order, fastest run: PostgreSQL backends" "$(per_order $((postgres_after - postgres_before)))"
succeeded=true
