# PostgreSQL from Debian's packages, with logical replication on.
# shellcheck shell=bash

PG_USER=sluice
PG_PASSWORD=sluice
PG_DB=sluice

pg_bindir() {
    local d
    d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)
    [ -n "$d" ] && echo "$d"
}

# The account the server runs as: postgres refuses to run as root.
pg_os_user() {
    if [ "$(id -u)" -ne 0 ]; then
        id -un
    else
        id -u postgres >/dev/null 2>&1 || useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
        echo postgres
    fi
}

# as_pg CMD...: runs CMD as the server's account.
as_pg() {
    if [ "$(id -u)" -ne 0 ]; then
        "$@"
    else
        runuser -u "$(pg_os_user)" -- "$@"
    fi
}

pg_ready() {
    "$(pg_bindir)/pg_isready" -q -h 127.0.0.1 -p "$1" &&
        PGPASSWORD=$PG_PASSWORD "$(pg_bindir)/psql" -qAt -h 127.0.0.1 -p "$1" -U "$PG_USER" -d "$PG_DB" \
            -c "select 1 where current_setting('wal_level') = 'logical'" | grep -q 1
}

postgres_up() {
    local port dir=$STATE/postgres bindir user
    port=$(port_for postgres)
    local url="postgres://$PG_USER:$PG_PASSWORD@127.0.0.1:$port/$PG_DB"
    if [ -z "$(pg_bindir)" ]; then
        apt_install postgresql postgresql-contrib
    fi
    bindir=$(pg_bindir) || die "PostgreSQL binaries not found after installing postgresql"
    if running postgres && pg_ready "$port"; then
        say "PostgreSQL already running on 127.0.0.1:$port"
        set_env DATABASE_URL "$url"
        return 0
    fi
    stop postgres
    user=$(pg_os_user)
    mkdir -p "$STATE"
    if [ ! -f "$dir/PG_VERSION" ]; then
        say "initdb PostgreSQL $("$bindir/postgres" --version | awk '{print $3}') into $dir"
        rm -rf "$dir"
        mkdir -p "$dir"
        chown "$user" "$dir"
        chmod 700 "$dir"
        local pwfile
        pwfile=$(mktemp)
        echo "$PG_PASSWORD" >"$pwfile"
        chmod 644 "$pwfile"
        as_pg "$bindir/initdb" -D "$dir" -U "$PG_USER" --pwfile="$pwfile" -A scram-sha-256 -E UTF8 \
            >>"$LOGS/postgres.log" 2>&1 || {
            rm -f "$pwfile"
            die "initdb failed; see $LOGS/postgres.log"
        }
        rm -f "$pwfile"
        cat >>"$dir/postgresql.conf" <<EOF
# e2e/up
listen_addresses = '127.0.0.1'
unix_socket_directories = '$dir'
wal_level = logical
max_replication_slots = 20
max_wal_senders = 20
max_connections = 200
fsync = off
full_page_writes = off
EOF
        # Replication connections over TCP with a password, too.
        echo "host replication all 127.0.0.1/32 scram-sha-256" >>"$dir/pg_hba.conf"
    fi
    # Logical decoding reads only flushed WAL: keep commits synchronous (fsync is off anyway).
    sed -i "/^port = /d; /^synchronous_commit = off/d" "$dir/postgresql.conf"
    echo "port = $port" >>"$dir/postgresql.conf"
    say "starting PostgreSQL on 127.0.0.1:$port"
    # The log file belongs to root; the server writes to its stdout, which start() redirects.
    if [ "$(id -u)" -eq 0 ]; then
        start postgres runuser -u "$user" -- "$bindir/postgres" -D "$dir"
    else
        start postgres "$bindir/postgres" -D "$dir"
    fi
    wait_until postgres 60 "$bindir/pg_isready" -q -h 127.0.0.1 -p "$port" ||
        die "PostgreSQL did not start; see $LOGS/postgres.log"
    PGPASSWORD=$PG_PASSWORD "$bindir/psql" -qAt -h 127.0.0.1 -p "$port" -U "$PG_USER" -d postgres \
        -c "select 1 from pg_database where datname = '$PG_DB'" | grep -q 1 ||
        PGPASSWORD=$PG_PASSWORD "$bindir/createdb" -h 127.0.0.1 -p "$port" -U "$PG_USER" "$PG_DB" ||
        die "could not create database $PG_DB"
    wait_until postgres 30 pg_ready "$port" || die "PostgreSQL did not become ready; see $LOGS/postgres.log"
    set_env DATABASE_URL "$url"
    say "PostgreSQL ready: $url"
}
