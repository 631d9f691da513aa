//! Run with: `cargo run --example vapid_keys`
//!
//! Prints a fresh VAPID key pair for Web Push: the public key is the `applicationServerKey`
//! browsers subscribe with; keep the private key secret (`VapidKeys::from_private_base64`
//! loads it, or let `VapidKeys::load_or_generate` keep it in a file).

/// Prints a fresh VAPID key pair (no flags; `--help` says so).
#[derive(Debug, clap::Parser)]
#[command(about = "Prints a fresh VAPID key pair for Web Push: the public key (applicationServerKey) and the private key", long_about = None)]
struct Args {}

fn main() {
    let Args {} = <Args as clap::Parser>::parse();
    let keys = tidings::webpush::VapidKeys::generate();
    println!("public key:  {}", keys.public_key_base64());
    println!("private key: {}", keys.private_key_base64());
}
