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

# A CA and a server certificate for 127.0.0.1, localhost and the node's address, made
# once per environment, so clients can connect with sslmode verify-full ($PG_CA_FILE).
pg_tls() {
    local data=$1 user=$2 tls=$STATE/postgres-tls
    if [ ! -f "$tls/server.crt" ]; then
        mkdir -p "$tls"
        openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=sluice-e2e-postgres-ca" \
            -keyout "$tls/ca.key" -out "$tls/ca.crt" >>"$LOGS/postgres.log" 2>&1 ||
            die "cannot make the PostgreSQL CA; see $LOGS/postgres.log"
        openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" \
            -keyout "$tls/server.key" -out "$tls/server.csr" >>"$LOGS/postgres.log" 2>&1 ||
            die "cannot make the PostgreSQL server key; see $LOGS/postgres.log"
        printf 'subjectAltName=IP:127.0.0.1,IP:10.88.0.1,DNS:localhost\n' >"$tls/san.ext"
        openssl x509 -req -in "$tls/server.csr" -CA "$tls/ca.crt" -CAkey "$tls/ca.key" \
            -CAcreateserial -days 3650 -extfile "$tls/san.ext" -out "$tls/server.crt" \
            >>"$LOGS/postgres.log" 2>&1 || die "cannot sign the PostgreSQL certificate; see $LOGS/postgres.log"
    fi
    install -m 0600 -o "$user" "$tls/server.key" "$data/server.key"
    install -m 0644 -o "$user" "$tls/server.crt" "$data/server.crt"
}

postgres_up() {
    local port dir=$STATE/postgres bindir user
    port=$(port_for postgres)
    # Clients reach the server on the node's address, the host's own as well as the pods'
    # gateway, so one URL serves tests, the node's pods and Kafka Connect.
    local url="postgres://$PG_USER:$PG_PASSWORD@$NODE_IP:$port/$PG_DB"
    if [ -z "$(pg_bindir)" ]; then
        apt_install postgresql postgresql-contrib
    fi
    bindir=$(pg_bindir) || die "PostgreSQL binaries not found after installing postgresql"
    if running postgres && pg_ready "$port"; then
        say "PostgreSQL already running on 127.0.0.1 and $NODE_IP:$port"
        set_env DATABASE_URL "$url"
        set_env PG_CA_FILE "$STATE/postgres-tls/ca.crt"
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
    pg_tls "$dir" "$user"
    # Logical decoding reads only flushed WAL: keep commits synchronous (fsync is off anyway).
    sed -i "/^port = /d; /^listen_addresses = /d; /^synchronous_commit = off/d; /^ssl/d" "$dir/postgresql.conf"
    # The pods' subnet may connect (the node's own address is in it too).
    grep -q "^host all all $POD_SUBNET " "$dir/pg_hba.conf" || {
        echo "host all all $POD_SUBNET scram-sha-256"
        echo "host replication all $POD_SUBNET scram-sha-256"
    } >>"$dir/pg_hba.conf"
    {
        echo "listen_addresses = '127.0.0.1,$NODE_IP'"
        echo "port = $port"
        echo "ssl = on"
        echo "ssl_cert_file = 'server.crt'"
        echo "ssl_key_file = 'server.key'"
    } >>"$dir/postgresql.conf"
    say "starting PostgreSQL on 127.0.0.1 and $NODE_IP:$port"
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
    set_env PG_CA_FILE "$STATE/postgres-tls/ca.crt"
    say "PostgreSQL ready: $url (TLS offered; CA $STATE/postgres-tls/ca.crt)"
}
