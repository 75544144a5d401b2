#!/usr/bin/env bash
# The reproduction of ADR 0009's tansu backlog defect: the production
# topology on tansu (libsql engine), ORDERS orders placed as fast as they
# go, then every 10 s the orders by status, the inbox rows per service and
# the unpublished outbox rows; at the end each partition's high watermark
# and committed offsets, read from tansu's SQLite file. A run that stops
# shows the counts frozen while orders stay PENDING.
#
#   bash hosts/saldo/benches/tansu-backlog.sh [ORDERS] [SALDO_BIN]
#
# Settings (environment): SALDO_TANSU (the tansu binary, as tests/run.sh
# installs it), TANSU_LOG (tansu's RUST_LOG, e.g.
# warn,tansu_storage::service::fetch=debug), SALDO_LOG, PARTITIONS (8),
# SALDO_KAFKA__DEBUG (librdkafka's debug contexts, e.g. cgrp, logged with
# SALDO_LOG=info,librdkafka=debug),
# WAIT (seconds saldo load waits for the orders to end, 240).
# Needs psql, curl, sqlite3 and python3; logs stay in the printed directory.
set -euo pipefail
ORDERS=${1:-1000}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)
SALDO=${2:-${CARGO_TARGET_DIR:-$root/target}/debug/saldo}
TANSU=${SALDO_TANSU:-$HOME/.cache/saldo/tansu-0.6.0/bin/tansu}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/saldo-tansu-backlog.XXXXXX")
ADMIN=${SALDO_BENCH_DATABASE_URL:-postgres://saldo_test:saldo_test@127.0.0.1:5432/postgres}
DB=saldo_bench_backlog_$$
URL=${ADMIN%/*}/$DB
pids=()
# Stops what it started (its own process ids) and drops its database.
cleanup() {
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    sleep 3
    for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    psql "$ADMIN" -qAt -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null || true
    echo "logs in $WORK"
}
trap cleanup EXIT
# A free loopback port.
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
KPORT=$(port)
(cd "$WORK" && RUST_LOG=${TANSU_LOG:-warn} "$TANSU" broker --listener-url tcp://127.0.0.1:$KPORT \
    --advertised-listener-url tcp://127.0.0.1:$KPORT --storage-engine sqlite://tansu.db >"$WORK/tansu.log" 2>&1) &
pids+=($!)
until (exec 3<>/dev/tcp/127.0.0.1/$KPORT) 2>/dev/null; do sleep 0.1; done
psql "$ADMIN" -qAt -c "CREATE DATABASE $DB" >/dev/null
"$SALDO" migrate --database-url "$URL" >"$WORK/migrate.log" 2>&1
export SALDO_DATABASE_URL=$URL SALDO_KAFKA_BOOTSTRAP=127.0.0.1:$KPORT SALDO_KAFKA_CREATE_TOPICS=true \
    SALDO_KAFKA_PARTITIONS=${PARTITIONS:-8} SALDO_KAFKA_REPLICATION=1 SALDO_LOG=${SALDO_LOG:-info}
O=127.0.0.1:$(port); I=127.0.0.1:$(port); P=127.0.0.1:$(port)
"$SALDO" order --http-address "$O" >"$WORK/order.log" 2>&1 & pids+=($!)
"$SALDO" inventory --http-address "$I" >"$WORK/inventory.log" 2>&1 & pids+=($!)
"$SALDO" payment --http-address "$P" >"$WORK/payment.log" 2>&1 & pids+=($!)
for s in order inventory payment; do "$SALDO" outbox --service $s >"$WORK/outbox-$s.log" 2>&1 & pids+=($!); done
for a in $O $I $P; do until curl -fsS "http://$a/readyz" >/dev/null 2>&1; do sleep 0.2; done; done
echo "ready; tansu on $KPORT; placing $ORDERS"
"$SALDO" load --url "http://$O" --inventory-url "http://$I" --payment-url "http://$P" --orders "$ORDERS" \
    --connections 32 --customers 200 --skus 20 --wait-seconds ${WAIT:-240} --json >"$WORK/load.json" 2>"$WORK/load.log" &
loadpid=$!
start=$(date +%s)
while kill -0 $loadpid 2>/dev/null; do
    sleep 10
    t=$(( $(date +%s) - start ))
    st=$(psql "$URL" -qAt -c "SELECT string_agg(status||'='||n, ' ') FROM (SELECT status, count(*) n FROM orders.orders GROUP BY 1 ORDER BY 1) x")
    inbox=$(psql "$URL" -qAt -c "SELECT (SELECT count(*) FROM inventory.inbox)||' '||(SELECT count(*) FROM payment.inbox)||' '||(SELECT count(*) FROM orders.inbox)")
    ob=$(psql "$URL" -qAt -c "SELECT (SELECT count(*) FROM orders.outbox WHERE published_at IS NULL)||' '||(SELECT count(*) FROM inventory.outbox WHERE published_at IS NULL)||' '||(SELECT count(*) FROM payment.outbox WHERE published_at IS NULL)")
    echo "t=${t}s orders: $st | inbox inv/pay/ord: $inbox | unpublished ord/inv/pay: $ob"
done
cat "$WORK/load.json"; echo
sqlite3 "$WORK/tansu.db" "SELECT t.name, tp.partition, (SELECT max(offset_id)+1 FROM record r WHERE r.topition=tp.id) AS hw, (SELECT group_concat(cg.name||'@'||co.committed_offset) FROM consumer_offset co JOIN consumer_group cg ON cg.id=co.consumer_group WHERE co.topition=tp.id) AS committed FROM topition tp JOIN topic t ON t.id=tp.topic ORDER BY 1,2" || true
