//! Writes the CRD YAML into `crds/yaml/` and the Helm chart. Run from anywhere in the repo:
//! `cargo run -p sluice-crds --bin crdgen`.

use std::path::PathBuf;

fn main() -> std::process::ExitCode {
    // Cargo says the checkout at run time: a target directory shared by several
    // checkouts can hold a binary compiled in another one.
    let root = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
        .join("..");
    match sluice_crds::generate::write_all(&root) {
        Ok(paths) => {
            for path in paths {
                println!("wrote {}", path.display());
            }
            std::process::ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("crdgen: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}
