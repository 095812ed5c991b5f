# Versions of everything e2e/up runs. The caches are keyed by these
# (${SLUICE_CACHE:-$HOME/.cache/sluice}/<component>-<version>/).
# shellcheck shell=bash

# Apache Kafka broker and Connect, from Maven Central (e2e/toolchain/pom.xml reads it as -Dkafka.version).
KAFKA_VERSION=4.3.1
# Debezium's PostgreSQL connector, a plugin of the Kafka Connect worker (e2e/toolchain/pom.xml reads it as -Ddebezium.version).
DEBEZIUM_VERSION=3.6.1.Final
# k8s.io/kubernetes; its staging modules are v0.<minor>.<patch> (e2e/toolchain/kubernetes/go.mod).
KUBERNETES_VERSION=v1.34.12
# The etcd that Kubernetes release uses (e2e/toolchain/etcd/go.mod).
ETCD_VERSION=v3.6.4
# helm.sh/helm/v3, the release built against Kubernetes 1.34.
HELM_VERSION=v3.19.5
# github.com/minio/minio: MinIO tags releases as RELEASE.<date>, which Go sees as pseudo-versions.
MINIO_VERSION=v0.0.0-20260212201848-7aac2a2c5b7c
# github.com/google/go-containerregistry: crane (builds and copies the images) and registry
# (a local OCI registry), for `make images` and the node.
GGCR_VERSION=v0.22.1
# The node (e2e/lib/node.sh): containerd with its runc shim, runc, and the CNI plugins,
# each from its Go module; kubelet and kube-scheduler are KUBERNETES_VERSION's.
CONTAINERD_VERSION=v2.4.2
RUNC_VERSION=v1.5.3
CNI_PLUGINS_VERSION=v1.10.0
