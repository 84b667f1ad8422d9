//! `gcm-inspect`: parse the command line, run the subcommand, map errors to
//! the documented exit codes (see `gcm_inspect::error::exit`).

use clap::Parser;

fn main() {
    let cli = gcm_inspect::cli::Cli::parse();
    gcm_inspect::cli::init_tracing(cli.verbose);
    match gcm_inspect::heap::tune() {
        Ok(t) => tracing::debug!(?t, "allocator"),
        Err(e) => tracing::warn!("allocator settings not applied: {e}"),
    }
    match gcm_inspect::cli::run(cli) {
        Ok(()) => {}
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(e.exit_code());
        }
    }
}
