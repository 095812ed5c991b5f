//! Plays scheduler and kubelet for one node in the e2e environment (not yet written).
fn main() {
    eprintln!("sluice-runner: not implemented yet");
    std::process::exit(2);
}
