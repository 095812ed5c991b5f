# Apache Kafka (KRaft, one combined broker+controller) and a Kafka Connect worker in
# distributed mode, both from their Maven Central jars.
# shellcheck shell=bash

# Keyed by the version and the pom that resolves the jars: a change to either resolves again.
KAFKA_CACHE=$CACHE/kafka-$KAFKA_VERSION-$(sha256sum "$E2E_DIR/toolchain/pom.xml" | cut -c1-8)
DEBEZIUM_CACHE=$CACHE/debezium-$DEBEZIUM_VERSION

# Kafka 4 brokers need Java 17 or newer.
ensure_java() {
    command -v java >/dev/null 2>&1 || apt_install openjdk-17-jre-headless
}

# maven_copy WHAT PROFILE OUTDIR [MVN-ARGS...]: copies the jars of one profile of
# e2e/toolchain/pom.xml into OUTDIR (WHAT names them in the error).
maven_copy() {
    local what=$1 profile=$2 out=$3 log=$LOGS/maven.log
    shift 3
    command -v mvn >/dev/null 2>&1 || apt_install maven
    mkdir -p "$LOGS"
    mvn -B -f "$E2E_DIR/toolchain/pom.xml" -Dkafka.version="$KAFKA_VERSION" \
        -Ddebezium.version="$DEBEZIUM_VERSION" -P"$profile" dependency:copy-dependencies \
        -DoutputDirectory="$out" "$@" >>"$log" 2>&1 ||
        die "Maven could not resolve $what; see $log"
}

# Resolves the jars with Maven into the cache: broker/, connect/, plugins/connect-file/.
kafka_jars() {
    [ -f "$KAFKA_CACHE/.complete" ] && return 0
    say "downloading Kafka $KAFKA_VERSION jars from Maven Central (mvn dependency:copy-dependencies)"
    rm -rf "$KAFKA_CACHE"
    mkdir -p "$KAFKA_CACHE"
    maven_copy "the Kafka broker jars" broker "$KAFKA_CACHE/broker" -DincludeScope=runtime
    maven_copy "the Kafka Connect jars" connect "$KAFKA_CACHE/connect" -DincludeScope=runtime
    # The plugin alone: its dependencies (connect-api) come from the worker's classpath.
    maven_copy connect-file connect-file "$KAFKA_CACHE/plugins/connect-file" -DexcludeTransitive=true
    touch "$KAFKA_CACHE/.complete"
}

# Resolves Debezium's PostgreSQL connector into the cache: plugins/debezium-postgres/. The
# Kafka and slf4j APIs come from the worker, as in Debezium's own plugin archive.
debezium_jars() {
    [ -f "$DEBEZIUM_CACHE/.complete" ] && return 0
    say "downloading Debezium $DEBEZIUM_VERSION (PostgreSQL connector) from Maven Central"
    rm -rf "$DEBEZIUM_CACHE"
    maven_copy "Debezium's PostgreSQL connector" debezium-postgres "$DEBEZIUM_CACHE/plugins/debezium-postgres" \
        -DincludeScope=runtime -DexcludeGroupIds=org.apache.kafka,org.slf4j
    touch "$DEBEZIUM_CACHE/.complete"
}

# A log4j2 configuration that logs to stdout (the component's log file).
kafka_log4j() {
    local file=$STATE/kafka/log4j2.properties
    mkdir -p "$STATE/kafka"
    cat >"$file" <<'EOF'
status = warn
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.out.ref = out
logger.kafka.name = kafka
logger.kafka.level = info
logger.reflections.name = org.reflections
logger.reflections.level = error
EOF
    echo "$file"
}

# Whether the broker answers a metadata request (lists topics with its own admin tool).
kafka_ready() {
    java -Xmx128m -cp "$KAFKA_CACHE/broker/*" -Dlog4j2.configurationFile="$STATE/kafka/log4j2.properties" \
        org.apache.kafka.tools.TopicCommand --bootstrap-server "$1" --list
}

# The SCRAM user of the broker's SASL listener (what `make deploy` gives Sluice).
KAFKA_SASL_USER=sluice
KAFKA_SASL_PASSWORD=sluice-e2e-secret

# Creates (or resets) the SCRAM-SHA-512 credentials of the SASL user, through the
# PLAINTEXT listener, with Kafka's own kafka-configs tool.
kafka_scram_user() {
    java -Xmx128m -cp "$KAFKA_CACHE/broker/*" -Dlog4j2.configurationFile="$STATE/kafka/log4j2.properties" \
        kafka.admin.ConfigCommand --bootstrap-server "$1" --alter --entity-type users \
        --entity-name "$KAFKA_SASL_USER" \
        --add-config "SCRAM-SHA-512=[iterations=4096,password=$KAFKA_SASL_PASSWORD]"
}

# The env entries of the SASL listener.
kafka_sasl_env() {
    set_env KAFKA_SASL_BOOTSTRAP "$NODE_IP:$1"
    set_env KAFKA_SASL_USER "$KAFKA_SASL_USER"
    set_env KAFKA_SASL_PASSWORD "$KAFKA_SASL_PASSWORD"
}

kafka_up() {
    local port cport sport pport dir=$STATE/kafka props bootstrap
    port=$(port_for kafka)
    sport=$(port_for kafka-sasl kafka)
    # Pods on the node reach the broker on the node's address (node.sh): in plain text on
    # the PODS listener, and with SASL/SCRAM on the SASL listener, which listens there
    # only (the node's address is the host's own too, so the same bootstrap serves both).
    pport=$(port_for kafka-pods kafka)
    bootstrap=127.0.0.1:$port
    props=$dir/server.properties
    # A broker started before the SASL or pods listener existed is restarted with them.
    if running kafka && grep -qs "SASL_PLAINTEXT://$NODE_IP:$sport" "$props" &&
        grep -qs "PODS://$NODE_IP:$pport" "$props" &&
        kafka_ready "$bootstrap" >/dev/null 2>&1; then
        say "Kafka already running at $bootstrap (SASL/SCRAM at $NODE_IP:$sport, pods at $NODE_IP:$pport)"
        set_env KAFKA_BOOTSTRAP "$bootstrap"
        set_env KAFKA_NODE_BOOTSTRAP "$NODE_IP:$pport"
        set_env KAFKA_JARS "$KAFKA_CACHE"
        kafka_sasl_env "$sport"
        return 0
    fi
    stop kafka
    ensure_java
    kafka_jars
    cport=$(port_for kafka-controller kafka)
    mkdir -p "$dir/data"
    local log4j
    log4j=$(kafka_log4j)
    cat >"$props" <<EOF
# Written by e2e/up: one node that is both broker and KRaft controller. Clients connect
# in plain text, or with SASL/SCRAM-SHA-512 on the SASL_PLAINTEXT listener.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,SASL_PLAINTEXT://$NODE_IP:$sport,PODS://$NODE_IP:$pport,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port,SASL_PLAINTEXT://$NODE_IP:$sport,PODS://$NODE_IP:$pport
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT,PODS:PLAINTEXT,CONTROLLER:PLAINTEXT
sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
log.dirs=$dir/data
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
EOF
    local java_opts=(-Xms256m -Xmx1g -XX:+UseG1GC -Djava.awt.headless=true
        -Dlog4j2.configurationFile="$log4j")
    if [ ! -f "$dir/data/meta.properties" ]; then
        local cluster_id
        cluster_id=$(java -cp "$KAFKA_CACHE/broker/*" "${java_opts[@]}" kafka.tools.StorageTool random-uuid 2>>"$LOGS/kafka.log" | tail -n1)
        [ -n "$cluster_id" ] || die "kafka-storage random-uuid failed; see $LOGS/kafka.log"
        say "formatting Kafka storage (cluster $cluster_id)"
        java -cp "$KAFKA_CACHE/broker/*" "${java_opts[@]}" kafka.tools.StorageTool format \
            -t "$cluster_id" -c "$props" >>"$LOGS/kafka.log" 2>&1 ||
            die "kafka-storage format failed; see $LOGS/kafka.log"
    fi
    say "starting Kafka $KAFKA_VERSION (KRaft) on $bootstrap"
    start kafka java "${java_opts[@]}" -cp "$KAFKA_CACHE/broker/*" kafka.Kafka "$props"
    wait_until kafka 120 kafka_ready "$bootstrap" || die "Kafka did not become ready; see $LOGS/kafka.log"
    kafka_scram_user "$bootstrap" >>"$LOGS/kafka.log" 2>&1 ||
        die "could not create the SCRAM user $KAFKA_SASL_USER; see $LOGS/kafka.log"
    set_env KAFKA_BOOTSTRAP "$bootstrap"
    set_env KAFKA_NODE_BOOTSTRAP "$NODE_IP:$pport"
    set_env KAFKA_JARS "$KAFKA_CACHE"
    kafka_sasl_env "$sport"
    say "Kafka ready at $bootstrap (SASL/SCRAM-SHA-512 at $NODE_IP:$sport, user $KAFKA_SASL_USER)"
}

# Whether the Connect REST API lists the FileStreamSource and Debezium PostgreSQL plugins.
connect_ready() {
    local plugins
    plugins=$(curl -fsS "$1/connector-plugins") &&
        grep -q FileStreamSourceConnector <<<"$plugins" &&
        grep -q io.debezium.connector.postgresql.PostgresConnector <<<"$plugins"
}

# Starts the Connect worker unless it runs; connect_wait waits for it (it takes ~20s, so
# e2e/up starts other parts meanwhile).
connect_start() {
    local port url dir=$STATE/connect props
    port=$(port_for connect)
    # On the node's address, so the installed operator's pod reaches the REST API too.
    url=http://$NODE_IP:$port
    if running connect && connect_ready "$url"; then
        say "Kafka Connect already running at $url"
        return 0
    fi
    stop connect
    ensure_java
    kafka_jars
    debezium_jars
    # Secrets the worker reads through its config providers, one directory per Secret, as
    # a Kubernetes Secret volume would mount them (tests write them here).
    mkdir -p "$dir/secrets"
    chmod 700 "$dir/secrets"
    props=$dir/worker.properties
    cat >"$props" <<EOF
# Written by e2e/up: a Kafka Connect worker in distributed mode.
bootstrap.servers=$(get_env KAFKA_BOOTSTRAP)
group.id=sluice-e2e-connect
key.converter=org.apache.kafka.connect.json.JsonConverter
value.converter=org.apache.kafka.connect.json.JsonConverter
key.converter.schemas.enable=false
value.converter.schemas.enable=false
offset.storage.topic=_connect-offsets
offset.storage.replication.factor=1
offset.storage.partitions=1
config.storage.topic=_connect-configs
config.storage.replication.factor=1
status.storage.topic=_connect-status
status.storage.replication.factor=1
status.storage.partitions=1
offset.flush.interval.ms=1000
listeners=$url
rest.advertised.host.name=$NODE_IP
rest.advertised.port=$port
plugin.path=$KAFKA_CACHE/plugins,$DEBEZIUM_CACHE/plugins
plugin.discovery=hybrid_warn
# Credentials reach connectors through config providers, never through connector config:
# \${directory:<dir>:<key>} reads one file of a mounted Secret, \${file:<path>:<key>} one
# key of a properties file.
config.providers=file,directory
config.providers.file.class=org.apache.kafka.common.config.provider.FileConfigProvider
config.providers.file.param.allowed.paths=$dir/secrets
config.providers.directory.class=org.apache.kafka.common.config.provider.DirectoryConfigProvider
config.providers.directory.param.allowed.paths=$dir/secrets
EOF
    say "starting Kafka Connect $KAFKA_VERSION (distributed) on $url"
    start connect java -Xms256m -Xmx1g -Djava.awt.headless=true \
        -Dlog4j2.configurationFile="$(kafka_log4j)" \
        -cp "$KAFKA_CACHE/connect/*" org.apache.kafka.connect.cli.ConnectDistributed "$props"
}

connect_wait() {
    local url
    url=http://$NODE_IP:$(port_for connect)
    wait_until connect 180 connect_ready "$url" || die "Kafka Connect did not become ready; see $LOGS/connect.log"
    set_env CONNECT_URL "$url"
    set_env CONNECT_SECRETS_DIR "$STATE/connect/secrets"
    say "Kafka Connect ready at $url (plugins: FileStream, Debezium PostgreSQL $DEBEZIUM_VERSION)"
}
