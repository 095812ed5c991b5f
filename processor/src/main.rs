//! The Sluice processor (not yet written).
fn main() {
    eprintln!("sluice-processor: not implemented yet");
    std::process::exit(2);
}
