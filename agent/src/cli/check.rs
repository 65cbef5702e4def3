//! `qianzhi check`: prints one `ok`/`FAIL`/`WARN` line per finding of
//! [`crate::check::run`] and fails if any check failed.
//!
//! Not here: the checks themselves (`crate::check`).

use std::path::Path;
use std::process::ExitCode;

/// Runs `qianzhi check`; `create_folders` creates missing drop folders.
pub fn main(config_path: &Path, create_folders: bool) -> ExitCode {
    let config = match super::load(config_path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    super::runtime().block_on(async {
        let mut ok = true;
        for f in crate::check::run(&config, create_folders).await {
            match f.outcome {
                Ok(()) => println!("ok    {}", f.what),
                Err(e) => {
                    ok = false;
                    println!("FAIL  {}: {e}", f.what);
                }
            }
            for w in f.warnings {
                println!("WARN  {}: {w}", f.what);
            }
        }
        if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE }
    })
}
