//! Writes the CRD YAML into `crds/yaml/` and the Helm chart. Run from anywhere in the repo:
//! `cargo run -p sluice-crds --bin crdgen`.

use std::path::Path;

fn main() -> std::process::ExitCode {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
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
