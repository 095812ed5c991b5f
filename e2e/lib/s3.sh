# MinIO, built from its Go module, as the S3-compatible object store; bucket `sluice`.
# shellcheck shell=bash

S3_ACCESS_KEY=sluice-e2e
S3_SECRET_KEY=sluice-e2e-secret
S3_BUCKET=sluice
S3_REGION=us-east-1

s3_ready() { curl -fsS -o /dev/null "$1/minio/health/ready"; }

# s3_request METHOD URL: one request signed with AWS Signature V4 by curl itself.
s3_request() {
    curl -fsS -o /dev/null -X "$1" --aws-sigv4 "aws:amz:$S3_REGION:s3" \
        --user "$S3_ACCESS_KEY:$S3_SECRET_KEY" "$2"
}

s3_up() {
    local port console endpoint
    port=$(port_for minio)
    # On the node's address: the host's own, and the pods' gateway.
    endpoint=http://$NODE_IP:$port
    if running minio && s3_ready "$endpoint"; then
        say "MinIO already running at $endpoint"
    else
        stop minio
        console=$(port_for minio-console minio)
        mkdir -p "$STATE/minio"
        say "starting MinIO on $endpoint"
        MINIO_ROOT_USER=$S3_ACCESS_KEY MINIO_ROOT_PASSWORD=$S3_SECRET_KEY MINIO_REGION=$S3_REGION \
            MINIO_BROWSER=off MINIO_UPDATE=off MINIO_CALLHOME_ENABLE=off \
            start minio "$BIN/minio" server "$STATE/minio" \
            --address "$NODE_IP:$port" --console-address "127.0.0.1:$console" --quiet
        wait_until minio 60 s3_ready "$endpoint" || die "MinIO did not become ready; see $LOGS/minio.log"
    fi
    # Create the bucket unless it is there (HEAD answers 200 for an existing bucket).
    if ! s3_request HEAD "$endpoint/$S3_BUCKET" 2>/dev/null; then
        s3_request PUT "$endpoint/$S3_BUCKET" || die "could not create bucket $S3_BUCKET; see $LOGS/minio.log"
    fi
    set_env S3_ENDPOINT "$endpoint"
    set_env S3_ACCESS_KEY "$S3_ACCESS_KEY"
    set_env S3_SECRET_KEY "$S3_SECRET_KEY"
    set_env S3_BUCKET "$S3_BUCKET"
    set_env S3_REGION "$S3_REGION"
    say "MinIO ready at $endpoint, bucket $S3_BUCKET"
}
