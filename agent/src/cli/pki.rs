//! `qianzhi pki`: development certificates, written by [`::pki::dev`].
//!
//! Not here: anything a production PKI does (the agency's certificates
//! come from the city's CA).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

#[derive(Subcommand)]
pub enum PkiCommand {
    /// Make a development CA, a hub certificate and agency certificates.
    Dev {
        #[arg(long)]
        out: PathBuf,
        /// Agency codes to issue client certificates for.
        #[arg(long = "agency", required = true)]
        agencies: Vec<String>,
        /// DNS names or IP addresses of the hub.
        #[arg(long = "hub-name", default_values = ["localhost", "127.0.0.1"])]
        hub_names: Vec<String>,
    },
}

/// Runs `qianzhi pki …`.
pub fn main(command: PkiCommand) -> ExitCode {
    let PkiCommand::Dev {
        out,
        agencies,
        hub_names,
    } = command;
    match ::pki::dev::write_dev(&out, &agencies, &hub_names) {
        Ok(files) => {
            for f in files {
                println!("wrote {}", f.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("qianzhi: pki dev: {e:#}");
            ExitCode::FAILURE
        }
    }
}
