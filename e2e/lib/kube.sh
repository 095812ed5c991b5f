# etcd, kube-apiserver and kube-controller-manager, with certificates made by openssl, and
# the admin kubeconfig. The API server listens on every address (clients on the host use
# 127.0.0.1) and advertises the node's, which pods reach through the `kubernetes` Service.
# shellcheck shell=bash

PKI=$STATE/pki
# A range the API server allocates Service IPs from; kube-proxy on the node routes it.
SERVICE_CIDR=10.96.0.0/16

# cert NAME SUBJECT [SAN]: a key and a certificate signed by the e2e CA.
cert() {
    local name=$1 subj=$2 san=${3:-} ext
    ext=$(mktemp)
    {
        echo "basicConstraints=CA:FALSE"
        echo "keyUsage=critical,digitalSignature,keyEncipherment"
        if [ -n "$san" ]; then
            echo "extendedKeyUsage=serverAuth,clientAuth"
            echo "subjectAltName=$san"
        else
            echo "extendedKeyUsage=clientAuth"
        fi
    } >"$ext"
    openssl req -new -newkey rsa:2048 -nodes -keyout "$PKI/$name.key" -subj "$subj" \
        -out "$PKI/$name.csr" 2>/dev/null
    openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
        -days 3650 -sha256 -extfile "$ext" -out "$PKI/$name.crt" 2>/dev/null
    rm -f "$ext" "$PKI/$name.csr"
}

kube_pki() {
    [ -f "$PKI/.complete" ] && return 0
    say "making certificates and the service-account key pair (openssl)"
    rm -rf "$PKI"
    mkdir -p "$PKI"
    openssl req -x509 -new -newkey rsa:2048 -nodes -keyout "$PKI/ca.key" -subj "/CN=sluice-e2e-ca" \
        -days 3650 -sha256 -out "$PKI/ca.crt" 2>/dev/null
    cert apiserver "/CN=kube-apiserver" \
        "DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:127.0.0.1,IP:10.96.0.1,IP:$NODE_IP"
    cert admin "/O=system:masters/CN=sluice-e2e-admin"
    cert controller-manager "/CN=system:kube-controller-manager"
    openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
    openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
    chmod 600 "$PKI"/*.key
    touch "$PKI/.complete"
}

# kubeconfig FILE USER: a kubeconfig for the API server with USER's client certificate.
kubeconfig() {
    local file=$1 user=$2 server=https://127.0.0.1:$(port_for kube-apiserver)
    cat >"$file" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: sluice-e2e
  cluster:
    server: $server
    certificate-authority-data: $(base64 -w0 "$PKI/ca.crt")
users:
- name: $user
  user:
    client-certificate-data: $(base64 -w0 "$PKI/$user.crt")
    client-key-data: $(base64 -w0 "$PKI/$user.key")
contexts:
- name: sluice-e2e
  context:
    cluster: sluice-e2e
    user: $user
    namespace: default
current-context: sluice-e2e
EOF
    chmod 600 "$file"
}

etcd_ready() { curl -fsS "http://127.0.0.1:$1/health" | grep -q '"health":"true"'; }

apiserver_ready() {
    curl -fsS --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" \
        "https://127.0.0.1:$1/readyz" | grep -qx ok
}

kcm_ready() { curl -fsSk "https://127.0.0.1:$1/healthz" | grep -qx ok; }

etcd_up() {
    local port peer
    port=$(port_for etcd)
    if running etcd && etcd_ready "$port"; then
        say "etcd already running on 127.0.0.1:$port"
        return 0
    fi
    stop etcd
    peer=$(port_for etcd-peer etcd)
    mkdir -p "$STATE/etcd"
    chmod 700 "$STATE/etcd"
    say "starting etcd $ETCD_VERSION on 127.0.0.1:$port"
    start etcd "$BIN/etcd" --name e2e --data-dir "$STATE/etcd" \
        --listen-client-urls "http://127.0.0.1:$port" --advertise-client-urls "http://127.0.0.1:$port" \
        --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
        --initial-cluster "e2e=http://127.0.0.1:$peer" --listen-metrics-urls "" \
        --quota-backend-bytes 2147483648 --unsafe-no-fsync --log-level warn
    wait_until etcd 60 etcd_ready "$port" || die "etcd did not become ready; see $LOGS/etcd.log"
}

apiserver_up() {
    local port
    port=$(port_for kube-apiserver)
    if running kube-apiserver && apiserver_ready "$port"; then
        say "kube-apiserver already running on 127.0.0.1:$port"
        return 0
    fi
    stop kube-apiserver
    # Pods reach the API server on the node's address (through the `kubernetes` Service
    # and kube-proxy): its certificate names that address too.
    openssl x509 -in "$PKI/apiserver.crt" -noout -text | grep -q "IP Address:$NODE_IP" ||
        cert apiserver "/CN=kube-apiserver" \
            "DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:127.0.0.1,IP:10.96.0.1,IP:$NODE_IP"
    # How the API server proves itself to kubelets (logs, exec, port-forward).
    [ -f "$PKI/apiserver-kubelet-client.crt" ] ||
        cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client"
    say "starting kube-apiserver $KUBERNETES_VERSION on 127.0.0.1:$port"
    start kube-apiserver "$BIN/kube-apiserver" \
        --etcd-servers "http://127.0.0.1:$(port_for etcd)" \
        --bind-address 0.0.0.0 --advertise-address "$NODE_IP" --secure-port "$port" \
        --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
        --client-ca-file "$PKI/ca.crt" \
        --kubelet-client-certificate "$PKI/apiserver-kubelet-client.crt" \
        --kubelet-client-key "$PKI/apiserver-kubelet-client.key" \
        --kubelet-preferred-address-types InternalIP,Hostname \
        --service-account-key-file "$PKI/sa.pub" --service-account-signing-key-file "$PKI/sa.key" \
        --service-account-issuer https://kubernetes.default.svc.cluster.local \
        --api-audiences https://kubernetes.default.svc.cluster.local \
        --service-cluster-ip-range "$SERVICE_CIDR" \
        --authorization-mode RBAC --allow-privileged=true \
        --cert-dir "$STATE/kube-apiserver" --profiling=false --v=1
    wait_until kube-apiserver 120 apiserver_ready "$port" ||
        die "kube-apiserver did not become ready; see $LOGS/kube-apiserver.log"
}

controller_manager_up() {
    local port
    port=$(port_for kube-controller-manager)
    if running kube-controller-manager && kcm_ready "$port"; then
        say "kube-controller-manager already running"
        return 0
    fi
    stop kube-controller-manager
    kubeconfig "$STATE/controller-manager.kubeconfig" controller-manager
    say "starting kube-controller-manager $KUBERNETES_VERSION"
    # Each controller acts as its own service account in kube-system, bound to its bootstrap
    # RBAC role (the controller manager's own identity may only mint their tokens).
    start kube-controller-manager "$BIN/kube-controller-manager" \
        --kubeconfig "$STATE/controller-manager.kubeconfig" \
        --authentication-kubeconfig "$STATE/controller-manager.kubeconfig" \
        --authorization-kubeconfig "$STATE/controller-manager.kubeconfig" \
        --bind-address 127.0.0.1 --secure-port "$port" \
        --controllers '*' --leader-elect=false --use-service-account-credentials=true \
        --service-account-private-key-file "$PKI/sa.key" --root-ca-file "$PKI/ca.crt" \
        --cluster-signing-cert-file "$PKI/ca.crt" --cluster-signing-key-file "$PKI/ca.key" \
        --service-cluster-ip-range "$SERVICE_CIDR" \
        --cert-dir "$STATE/kube-controller-manager" --profiling=false --v=1
    wait_until kube-controller-manager 120 kcm_ready "$port" ||
        die "kube-controller-manager did not become ready; see $LOGS/kube-controller-manager.log"
}

kube_up() {
    kube_pki
    etcd_up
    apiserver_up
    kubeconfig "$STATE/kubeconfig" admin
    controller_manager_up
    set_env KUBECONFIG "$STATE/kubeconfig"
    say "Kubernetes $KUBERNETES_VERSION API ready at https://127.0.0.1:$(port_for kube-apiserver) (KUBECONFIG=$STATE/kubeconfig)"
}
