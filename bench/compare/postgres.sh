#!/usr/bin/env bash
# Miqat against PostgreSQL on the same machine, the same data set and the same reservation
# rule: durable reservations per second from 64 closed-loop clients, spread over every
# caravan and on 16 hot caravans, the two systems alternating within one invocation. Not
# part of CI.
#
#   bench/compare/postgres.sh [--rounds N] [--clients N] [--seconds N] [--work DIR]
#
# Environment: PG_PORT (default 26432) and MIQAT_PORT (26480) for the two servers,
# HOT_CARAVANS (16). Installs PostgreSQL and wrk from the distribution's packages if they are
# missing (needs root), builds `miqat`, writes a national data set with `miqat gen` (1 M
# holders, 400,000 seats so that no run runs out of plan), runs a private PostgreSQL cluster
# in the work folder with durable settings (fsync=on, synchronous_commit=on), loads the data
# set into it (schema.sql, load.sql), builds the same plan for both systems (plan.sql),
# prints the plans PostgreSQL caches inside the function, then runs the rounds and prints a
# summary. PostgreSQL is driven by pgbench (reserve.pgbench, prepared statements, one
# transaction per reservation), Miqat by wrk (reserve.lua, HTTP/1.1 keep-alive), both C
# clients with one connection per client.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
rounds=3
clients=64
seconds=6
work=""
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) rounds=$2; shift 2 ;;
        --clients) clients=$2; shift 2 ;;
        --seconds) seconds=$2; shift 2 ;;
        --work) work=$2; shift 2 ;;
        *) echo "usage: $0 [--rounds N] [--clients N] [--seconds N] [--work DIR]" >&2; exit 2 ;;
    esac
done
pg_port=${PG_PORT:-26432}
miqat_port=${MIQAT_PORT:-26480}
hot_caravans=${HOT_CARAVANS:-16}
# A past instant: registration is open throughout the runs, on both systems.
opens_at=2020-01-01T06:30:00Z

# --- PostgreSQL from the distribution ------------------------------------------------------
if ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
    echo "installing PostgreSQL from the distribution's packages" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql postgresql-contrib >/dev/null
fi
if ! command -v wrk >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
fi
pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
# PostgreSQL refuses to run as root: then its commands run as the `postgres` user.
as_pg() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

# --- Miqat ---------------------------------------------------------------------------------
# MIQAT_BIN: an already built binary to measure instead (e.g. an older commit's).
miqat=${MIQAT_BIN:-$root/target/release/miqat}
if [ -z "${MIQAT_BIN:-}" ]; then
    (cd "$root" && cargo build --release --quiet -p miqat --bin miqat)
fi

if [ -z "$work" ]; then work=$(mktemp -d -t miqat-compare.XXXXXX); fi
mkdir -p "$work"
chmod 755 "$work"
echo "work folder: $work" >&2
data=$work/data
if [ ! -f "$data/holders.csv" ]; then
    "$miqat" gen --out "$data" --seats 400000 --opens-at "$opens_at" >/dev/null 2>&1
fi
chmod -R a+rX "$data"
# The waves' cutoffs, as yyyymmdd, in the order of season.toml (main first, then reserve).
mapfile -t cutoffs < <(sed -n 's|^receipts_until = "\([0-9]*\)/\([0-9]*\)/\([0-9]*\)"|\1\2\3|p' "$data/season.toml")
main_cutoff=${cutoffs[0]}

pgdata=$work/pg
sql() { "$pg_bin/psql" -h 127.0.0.1 -p "$pg_port" -U postgres -d bench -v ON_ERROR_STOP=1 -q "$@"; }
stop_pg() { as_pg "$pg_bin/pg_ctl" -D "$pgdata" -m fast -w stop >/dev/null 2>&1 || true; }
miqat_pid=""
cleanup() {
    if [ -n "$miqat_pid" ]; then kill "$miqat_pid" 2>/dev/null || true; fi
    stop_pg
}
trap cleanup EXIT

if [ ! -f "$pgdata/PG_VERSION" ]; then
    mkdir -p "$pgdata"
    if [ "$(id -u)" = 0 ]; then chown postgres "$pgdata"; fi
    as_pg "$pg_bin/initdb" -D "$pgdata" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null
    cat >>"$pgdata/postgresql.conf" <<EOF
# bench/compare/postgres.sh: a private cluster with durable settings (the defaults, spelled out)
port = $pg_port
listen_addresses = '127.0.0.1'
unix_socket_directories = '$pgdata'
fsync = on
synchronous_commit = on
full_page_writes = on
wal_sync_method = fdatasync
max_connections = $((clients + 20))
shared_buffers = 512MB
max_wal_size = 4GB
shared_preload_libraries = 'pg_stat_statements'
EOF
fi
if ! as_pg "$pg_bin/pg_ctl" -D "$pgdata" status >/dev/null 2>&1; then
    as_pg "$pg_bin/pg_ctl" -D "$pgdata" -l "$pgdata/server.log" -w start >/dev/null
fi
"$pg_bin/psql" -h 127.0.0.1 -p "$pg_port" -U postgres -q -tA \
    -c "SELECT 1 FROM pg_database WHERE datname = 'bench'" | grep -q 1 ||
    "$pg_bin/psql" -h 127.0.0.1 -p "$pg_port" -U postgres -q -c "CREATE DATABASE bench"
if [ "$(sql -tA -c "SELECT count(*) FROM pg_tables WHERE tablename = 'caravans_original'")" != 1 ]; then
    echo "loading the data set into PostgreSQL" >&2
    sql -f "$here/schema.sql"
    sql -v data="$data" -v cutoff="$main_cutoff" -v opens_at="$opens_at" -f "$here/load.sql" 2>/dev/null
    if [ "${#cutoffs[@]}" -gt 1 ]; then
        # The reserve wave: wider cutoff, 12 days after the main wave (as `miqat gen` writes it).
        sql -c "INSERT INTO waves VALUES ('reserve', ${cutoffs[1]}, timestamptz '$opens_at' + interval '12 days', NULL)"
    fi
    sql -c "CREATE TABLE caravans_original AS SELECT id, capacity FROM caravans"
fi
sql -c "CREATE EXTENSION IF NOT EXISTS pg_stat_statements"

# CPU time in clock ticks of the whole PostgreSQL server: the postmaster, the backends it has
# reaped (cutime, cstime) and the processes still running under it.
pg_cpu_ticks() {
    local postmaster total pid
    postmaster=$(head -1 "$pgdata/postmaster.pid")
    total=$(awk '{ sub(/^.*\) /, ""); print $12 + $13 + $14 + $15 }' "/proc/$postmaster/stat")
    for pid in $(ps -o pid= --ppid "$postmaster"); do
        if [ -r "/proc/$pid/stat" ]; then
            total=$((total + $(awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$pid/stat" 2>/dev/null || echo 0)))
        fi
    done
    echo "$total"
}
ticks_per_s=$(getconf CLK_TCK)

results=$work/results.tsv
: >"$results"

# One PostgreSQL run of `seconds`: reservations per second, mean latency, server CPU per
# reservation.
run_pg() {
    local scenario=$1 round=$2 out before after made done_count tps latency
    sql -c "TRUNCATE reservations" -c "UPDATE caravans SET taken = 0" -c "VACUUM ANALYZE caravans" \
        -c "CHECKPOINT" -c "SELECT pg_stat_statements_reset()" >/dev/null
    before=$(pg_cpu_ticks)
    out=$("$pg_bin/pgbench" -h 127.0.0.1 -p "$pg_port" -U postgres -n -M prepared \
        -c "$clients" -j 2 -T "$seconds" -D n=0 -D clients="$clients" \
        -f "$here/reserve.pgbench" bench 2>&1)
    sleep 0.5
    after=$(pg_cpu_ticks)
    made=$(sql -tA -c "SELECT count(*) FROM reservations")
    tps=$(sed -n 's/^tps = \([0-9.]*\) (without initial connection time)$/\1/p' <<<"$out")
    latency=$(sed -n 's/^latency average = \([0-9.]*\) ms$/\1/p' <<<"$out")
    done_count=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' <<<"$out")
    if [ "$made" != "$done_count" ] || [ -z "$tps" ]; then
        echo "$out" >&2
        echo "PostgreSQL made $made reservations in $done_count transactions" >&2
        exit 1
    fi
    local cpu_us=$(( (after - before) * 1000000 / ticks_per_s / made ))
    printf 'postgresql\t%s\t%s\t%.0f\tmean %s ms\t%s\n' "$scenario" "$round" "$tps" "$latency" "$cpu_us" | tee -a "$results"
}

# CPU time of process `pid` (all its threads) in clock ticks.
cpu_ticks() { awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"; }

# Waits until Miqat's /readyz answers 200 (it loads its catalog and recovers first).
wait_ready() {
    local tries
    for tries in $(seq 1 600); do
        if { exec 3<>"/dev/tcp/127.0.0.1/$miqat_port"; } 2>/dev/null; then
            printf 'GET /readyz HTTP/1.0\r\n\r\n' >&3
            if head -1 <&3 | grep -q ' 200 '; then exec 3<&-; return 0; fi
            exec 3<&-
        fi
        sleep 0.2
    done
    echo "Miqat was not ready within 120 s; see $work/miqat-serve.log" >&2
    exit 1
}

# One Miqat run of `seconds` on a fresh log: the same plan, the same number of connections.
run_miqat() {
    local scenario=$1 round=$2 catalog=$3 log out before after rate requests p50 p99
    log=$work/miqat-log
    rm -rf "$log"
    "$miqat" serve --catalog "$catalog" --data-dir "$log" --listen "127.0.0.1:$miqat_port" \
        --holder-rate 0 >"$work/miqat-serve.log" 2>&1 &
    miqat_pid=$!
    wait_ready
    before=$(cpu_ticks "$miqat_pid")
    out=$(PLAN=$work/plan-$scenario.csv THREADS=2 wrk -t2 -c"$clients" -d"${seconds}s" \
        --latency -s "$here/reserve.lua" "http://127.0.0.1:$miqat_port")
    after=$(cpu_ticks "$miqat_pid")
    kill "$miqat_pid"
    wait "$miqat_pid" 2>/dev/null || true
    miqat_pid=""
    if grep -q -e 'Non-2xx' -e 'Socket errors' <<<"$out"; then
        echo "$out" >&2
        echo "Miqat answered something other than 201 (plan too short for the run?)" >&2
        exit 1
    fi
    rate=$(sed -n 's/^Requests\/sec: *\([0-9.]*\)/\1/p' <<<"$out")
    requests=$(sed -n 's/^ *\([0-9]*\) requests in .*/\1/p' <<<"$out")
    p50=$(awk '$1 == "50%" { print $2 }' <<<"$out")
    p99=$(awk '$1 == "99%" { print $2 }' <<<"$out")
    printf 'miqat\t%s\t%s\t%.0f\tp50 %s, p99 %s\t%s\n' "$scenario" "$round" "$rate" "$p50" "$p99" \
        "$(( (after - before) * 1000000 / ticks_per_s / requests ))" | tee -a "$results"
}

echo "system	scenario	round	reservations/s	latency	server CPU µs per reservation"
for scenario in spread hot; do
    sql -v scenario="$scenario" -v cutoff="$main_cutoff" -v hot_caravans="$hot_caravans" \
        -f "$here/plan.sql" >/dev/null
    sql -c "\\copy (SELECT lpad(national_id::text, 10, '0'), tracking_code, caravan_id FROM plan ORDER BY i) TO '$work/plan-$scenario.csv' WITH (FORMAT csv)"
    catalog=$data
    if [ "$scenario" = hot ]; then
        # Miqat's catalog with the same raised capacities.
        catalog=$work/data-hot
        mkdir -p "$catalog"
        cp "$data/holders.csv" "$data/provinces.csv" "$data/season.toml" "$catalog/"
        sql -c "\\copy (SELECT id, province_id, city, manager, phone, price_group, route, departure_date, price_rial, capacity FROM caravans ORDER BY id) TO '$catalog/caravans.csv' WITH (FORMAT csv, HEADER true)"
    fi
    if [ "$scenario" = spread ]; then
        # The trap: statistics of an empty reservations table (the ANALYZE below is rolled back
        # with the rest of this transaction).
        echo "-- plans inside reserve(), as cached after six calls (auto_explain), empty reservations table analyzed" >&2
        sql -c "BEGIN; LOAD 'auto_explain'; SET auto_explain.log_min_duration = 0;
                SET auto_explain.log_nested_statements = on; SET auto_explain.log_level = notice;
                SET client_min_messages = notice; SET auto_explain.log_format = text;
                ANALYZE reservations;
                SELECT reserve(national_id, tracking_code, caravan_id) FROM plan WHERE i < 5;
                SELECT reserve(national_id, tracking_code, caravan_id) FROM plan WHERE i = 5;
                ROLLBACK;" 2>&1 | sed -n '/i = 5/,$p' | grep -E 'Query Text|Scan|Update on|Insert on|Conflict|Result' >&2 || true
        echo "-- generic plans of the statements that touch reservations and caravans by key" >&2
        sql -c "SET plan_cache_mode = force_generic_plan;
                PREPARE seat(text) AS UPDATE caravans SET taken = taken + 1 WHERE id = \$1 AND taken < capacity;
                PREPARE undo(uuid) AS DELETE FROM reservations WHERE id = \$1;
                EXPLAIN EXECUTE seat('x'); EXPLAIN EXECUTE undo(gen_random_uuid());" >&2
    fi
    for round in $(seq 1 "$rounds"); do
        if [ $((round % 2)) = 1 ]; then
            run_pg "$scenario" "$round"
            run_miqat "$scenario" "$round" "$catalog"
        else
            run_miqat "$scenario" "$round" "$catalog"
            run_pg "$scenario" "$round"
        fi
    done
    echo "-- PostgreSQL's time per statement in the last run (pg_stat_statements, µs per call)" >&2
    sql -c "SELECT calls, round((total_exec_time / calls * 1000)::numeric, 1) AS us_per_call,
                   left(regexp_replace(query, '\s+', ' ', 'g'), 90) AS query
            FROM pg_stat_statements WHERE calls >= 1000 ORDER BY total_exec_time DESC LIMIT 8" >&2
done

echo
echo "medians over $rounds rounds, $clients clients (the machine's load: $(cut -d' ' -f1-3 /proc/loadavg))"
for scenario in spread hot; do
    awk -F'\t' -v s="$scenario" '
        function median(list, n,   i, j, t) {
            for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++)
                if (list[j] < list[i]) { t = list[i]; list[i] = list[j]; list[j] = t }
            return n % 2 ? list[(n + 1) / 2] : (list[n / 2] + list[n / 2 + 1]) / 2
        }
        $2 == s && $1 == "miqat" { m[++nm] = $4; mc[nm] = $6 }
        $2 == s && $1 == "postgresql" { p[++np] = $4; pc[np] = $6 }
        END {
            mm = median(m, nm); pm = median(p, np)
            printf "%-7s Miqat %7.0f/s (%s µs CPU each)  PostgreSQL %6.0f/s (%s µs CPU each)  ratio %.1fx\n",
                s, mm, median(mc, nm), pm, median(pc, np), mm / pm
        }' "$results"
done
