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

/// The last build stage of a Dockerfile, as the image it makes.
#[derive(Debug, PartialEq)]
struct Described {
    entrypoint: Vec<String>,
    user: String,
    exposed: Vec<String>,
    /// Where the binary is copied to.
    binary: String,
}

fn described_by(dockerfile: &str) -> Described {
    let text = std::fs::read_to_string(sluice_e2e::env::repo_root().join(dockerfile))
        .expect("read the Dockerfile");
    let last_stage = text.rsplit("\nFROM ").next().expect("a final stage");
    let value = |instruction: &str| -> String {
        last_stage
            .lines()
            .find_map(|l| l.strip_prefix(instruction))
            .unwrap_or_else(|| panic!("{dockerfile}: no {instruction}"))
            .trim()
            .to_string()
    };
    let entrypoint: Vec<String> =
        serde_json::from_str(&value("ENTRYPOINT ")).expect("ENTRYPOINT in exec form");
    let copy = value("COPY ");
    Described {
        entrypoint,
        user: value("USER "),
        exposed: value("EXPOSE ")
            .split_whitespace()
            .map(|p| {
                if p.contains('/') {
                    p.to_string()
                } else {
                    format!("{p}/tcp")
                }
            })
            .collect(),
        binary: copy
            .split_whitespace()
            .last()
            .expect("a COPY destination")
            .to_string(),
    }
}

/// An OCI image archive of `make images`, unpacked: its config, and its layers applied in
/// order into `rootfs`.
struct Unpacked {
    dir: PathBuf,
    config: serde_json::Value,
}

impl Unpacked {
    fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs")
    }
}

impl Drop for Unpacked {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn run(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn unpack(name: &str) -> Unpacked {
    let archive = sluice_e2e::env::TestEnv::state_dir()
        .join("images")
        .join(format!("{name}.oci.tar"));
    assert!(
        archive.exists(),
        "{} is missing: `make e2e` builds it with e2e/images/build",
        archive.display()
    );
    let dir = std::env::temp_dir().join(format!("sluice-image-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let layout = dir.join("layout");
    std::fs::create_dir_all(&layout).expect("a scratch directory");
    run(Command::new("tar")
        .arg("-xf")
        .arg(&archive)
        .arg("-C")
        .arg(&layout));
    let read_json = |path: PathBuf| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("JSON")
    };
    let blob = |digest: &serde_json::Value| {
        let digest = digest.as_str().expect("a digest");
        layout.join("blobs").join(digest.replace(':', "/"))
    };
    let index = read_json(layout.join("index.json"));
    assert_eq!(
        index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"],
        format!("ghcr.io/sluice/{name}:0.1.0"),
        "the archive names the image as the chart does"
    );
    let manifest = read_json(blob(&index["manifests"][0]["digest"]));
    let config = read_json(blob(&manifest["config"]["digest"]));
    let rootfs = dir.join("rootfs");
    std::fs::create_dir_all(&rootfs).expect("a rootfs directory");
    for layer in manifest["layers"].as_array().expect("layers") {
        run(Command::new("tar")
            .arg("-xzf")
            .arg(blob(&layer["digest"]))
            .arg("-C")
            .arg(&rootfs)
            .arg("--same-owner"));
    }
    Unpacked { dir, config }
}

#[test]
fn make_images_builds_what_the_dockerfiles_describe_and_each_entrypoint_starts_in_its_own_root_as_nonroot()
 {
    let packages: Vec<String> =
        std::fs::read_to_string(sluice_e2e::env::repo_root().join("e2e/images/base-packages"))
            .expect("read base-packages")
            .lines()
            .filter_map(|l| l.split('#').next())
            .filter_map(|l| {
                l.trim()
                    .split('=')
                    .next()
                    .filter(|n| !n.is_empty())
                    .map(String::from)
            })
            .collect();
    for (name, dockerfile) in [
        ("sluice-operator", "operator/Dockerfile"),
        ("sluice-processor", "processor/Dockerfile"),
    ] {
        let described = described_by(dockerfile);
        let image = unpack(name);
        let config = &image.config["config"];
        let exposed: Vec<String> = config["ExposedPorts"]
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default();
        let built = Described {
            entrypoint: serde_json::from_value(config["Entrypoint"].clone()).expect("Entrypoint"),
            user: config["User"].as_str().unwrap_or_default().to_string(),
            exposed,
            binary: described.entrypoint[0].clone(),
        };
        assert_eq!(
            built, described,
            "{name}: the build and {dockerfile} differ"
        );
        assert_eq!(
            described.binary, described.entrypoint[0],
            "{dockerfile} runs what it copies"
        );

        // The files: the binary, the users, the CA bundle, the base's packages.
        let rootfs = image.rootfs();
        let binary = rootfs.join(described.binary.trim_start_matches('/'));
        let mode = std::fs::metadata(&binary).expect("the binary is in the image");
        assert!(std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o111 != 0);
        let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).expect("/etc/passwd");
        assert!(passwd.contains("nonroot:x:65532:65532:"), "{passwd}");
        let bundle = std::fs::read_to_string(rootfs.join("etc/ssl/certs/ca-certificates.crt"))
            .expect("the CA bundle");
        assert!(bundle.matches("BEGIN CERTIFICATE").count() > 50);
        let mut status: Vec<String> = std::fs::read_dir(rootfs.join("var/lib/dpkg/status.d"))
            .expect("dpkg status")
            .map(|e| {
                e.expect("an entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        status.sort();
        let mut listed = packages.clone();
        listed.sort();
        assert_eq!(status, listed, "{name} holds exactly the listed packages");

        // The entrypoint starts in the image's own root, read-only, as its user: every
        // library it loads is the image's own.
        let root = rootfs.display().to_string();
        let script = format!(
            "mount --bind {root} {root} && mount -o remount,bind,ro {root} {root} && \
             exec chroot --userspec={user} {root} {entry} --help",
            user = described.user,
            entry = described.entrypoint[0]
        );
        let out = run(Command::new("unshare").args(["--mount", "--fork", "sh", "-c", &script]));
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(help.contains("Usage"), "{name} --help printed: {help}");
        let write = Command::new("unshare")
            .args([
                "--mount",
                "--fork",
                "sh",
                "-c",
                &format!(
                    "mount --bind {root} {root} && mount -o remount,bind,ro {root} {root} && \
                     touch {root}/tmp/x"
                ),
            ])
            .output()
            .expect("run touch");
        assert!(!write.status.success(), "the root filesystem is read-only");
    }
}
