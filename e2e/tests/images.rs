//! The images' binaries can start on the images' base: every shared library the operator
//! and the processor load is one the base image carries. (A glibc Rust binary on
//! `distroless/base` lacks `libgcc_s.so.1`; librdkafka wants `libz.so.1`, which no
//! distroless image carries, so zlib is linked in.)

use std::path::PathBuf;
use std::process::Command;

/// The base image of both Dockerfiles.
const BASE_IMAGE: &str = "gcr.io/distroless/cc-debian12:nonroot";

/// The shared libraries `gcr.io/distroless/cc-debian12` carries that a Rust binary
/// linking OpenSSL may load: glibc's, libgcc's and libssl3's.
const BASE_LIBRARIES: &[&str] = &[
    "linux-vdso.so.1",
    "ld-linux-x86-64.so.2",
    "libc.so.6",
    "libm.so.6",
    "libdl.so.2",
    "libpthread.so.0",
    "librt.so.1",
    "libgcc_s.so.1",
    "libstdc++.so.6",
    "libssl.so.3",
    "libcrypto.so.3",
];

/// The file names of the shared libraries `ldd` says `path` loads.
fn needed(path: &PathBuf) -> Vec<String> {
    let out = Command::new("ldd").arg(path).output().expect("run ldd");
    assert!(out.status.success(), "ldd {}", path.display());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(|lib| lib.rsplit('/').next().unwrap_or(lib).to_string())
        .collect()
}

#[test]
fn both_binaries_load_only_libraries_their_base_image_carries() {
    for (name, dockerfile) in [
        ("sluice-operator", "operator/Dockerfile"),
        ("sluice-processor", "processor/Dockerfile"),
    ] {
        let text = std::fs::read_to_string(sluice_e2e::env::repo_root().join(dockerfile))
            .expect("read the Dockerfile");
        let base = text
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("FROM "))
            .expect("a FROM line");
        assert_eq!(
            base.trim(),
            BASE_IMAGE,
            "{dockerfile}: the library list here is that of {BASE_IMAGE}"
        );
        let libs = needed(&sluice_e2e::env::cargo_binary(name));
        assert!(libs.iter().any(|l| l == "libc.so.6"), "{name}: {libs:?}");
        let missing: Vec<&String> = libs
            .iter()
            .filter(|l| !BASE_LIBRARIES.contains(&l.as_str()))
            .collect();
        assert!(
            missing.is_empty(),
            "{name} loads {missing:?}, which {BASE_IMAGE} does not carry"
        );
    }
}
