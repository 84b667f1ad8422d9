//! `gcm-inspect`: parse the command line, run the subcommand, map errors to
//! the documented exit codes (see `gcm_inspect::error::exit`).

use clap::Parser;

fn main() {
    // clap exits 2 on a usage error; ours is EX_USAGE (64), as for every
    // other usage error the program finds itself.
    let cli = match gcm_inspect::cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            let code = if e.use_stderr() {
                gcm_inspect::error::exit::USAGE
            } else {
                gcm_inspect::error::exit::OK
            };
            std::process::exit(code);
        }
    };
    // Before any thread starts (set_var) and before candle's pool exists.
    let spin = gcm_inspect::engine::tune_candle_pool();
    // A one-shot command whose output is cut short (`gcm-inspect eval ... |
    // head`) ends as other Unix tools do, on SIGPIPE, instead of panicking in
    // println!. The daemon and the review server keep SIGPIPE ignored: an
    // HTTP client that hangs up must not stop them.
    #[cfg(target_os = "linux")]
    if !matches!(
        cli.command,
        gcm_inspect::cli::Command::Run(_) | gcm_inspect::cli::Command::Review(_)
    ) {
        // SAFETY: called before any thread is started; SIG_DFL is a valid disposition.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    gcm_inspect::cli::logging::init_tracing(cli.verbose);
    match spin {
        Some(v) => tracing::debug!("candle pool spin limit {v}"),
        None => tracing::debug!("candle pool spin limit left to the environment"),
    }
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
