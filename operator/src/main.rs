//! The Sluice operator (not yet written).
fn main() {
    eprintln!("sluice-operator: not implemented yet");
    std::process::exit(2);
}
