//! The Sluice processor binary.
fn main() {
    eprintln!("sluice-processor: not implemented yet");
    std::process::exit(2);
}
