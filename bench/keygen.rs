//! Writes a signing key and a sealing key with `sis_gateway::tokens::keygen`,
//! for builds whose binary has no `keygen` subcommand yet. Prints the paths
//! as `signing_key=… sealing_key=…`.
//!
//! `cargo run --release --example bench_keygen -- --dir DIR --algorithm ES256`

use std::path::PathBuf;

use anyhow::bail;
use clap::Parser;
use sis_gateway::config::Algorithm;

#[derive(Parser)]
#[command(about = "Generate a signing key and a sealing key")]
struct Args {
    #[arg(long)]
    dir: PathBuf,
    /// ES256, RS256 or EdDSA
    #[arg(long, default_value = "ES256")]
    algorithm: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let alg = match args.algorithm.to_ascii_uppercase().as_str() {
        "ES256" => Algorithm::Es256,
        "RS256" => Algorithm::Rs256,
        "EDDSA" => Algorithm::EdDsa,
        other => bail!("unknown algorithm {other} (ES256, RS256, EdDSA)"),
    };
    let k = sis_gateway::tokens::keygen(&args.dir, alg)?;
    println!(
        "signing_key={} sealing_key={} kid={}",
        k.signing_key.display(),
        k.sealing_key.display(),
        k.kid
    );
    Ok(())
}
