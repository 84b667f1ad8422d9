//! Hidden subcommands for packaging: `gcm-inspect completions SHELL` prints
//! a shell completion script, `gcm-inspect man --out-dir DIR` writes the
//! manual pages (one per visible subcommand). Both are generated from the
//! same clap definition the binary parses with, so they cannot drift from
//! it; scripts/build-deb.sh runs them on the binary it packages (not
//! build.rs: a completion script is no input of the build, and the binary
//! that is packaged is the one that describes itself).

use std::io::Write;
use std::path::PathBuf;

use clap::CommandFactory;

use crate::error::{Error, Result};

#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// The shell to write the completion script for.
    #[arg(value_name = "SHELL")]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, clap::Args)]
pub struct ManArgs {
    /// Folder for the pages (gcm-inspect.1, gcm-inspect-run.1, ...); created
    /// if missing.
    #[arg(long, value_name = "DIR")]
    pub out_dir: PathBuf,
}

pub fn completions(a: CompletionsArgs) -> Result<()> {
    let mut cmd = super::Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(a.shell, &mut cmd, "gcm-inspect", &mut out);
    std::io::stdout()
        .write_all(&out)
        .map_err(|e| Error::io("<stdout>", e))
}

pub fn man(a: ManArgs) -> Result<()> {
    std::fs::create_dir_all(&a.out_dir).map_err(|e| Error::io(&a.out_dir, e))?;
    clap_mangen::generate_to(super::Cli::command(), &a.out_dir)
        .map_err(|e| Error::io(&a.out_dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completions_of_every_shell_name_the_subcommands_and_their_options() {
        for shell in [
            clap_complete::Shell::Bash,
            clap_complete::Shell::Zsh,
            clap_complete::Shell::Fish,
        ] {
            let mut cmd = super::super::Cli::command();
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut cmd, "gcm-inspect", &mut out);
            let text = String::from_utf8(out).unwrap();
            for word in [
                "run",
                "check-config",
                "verify",
                "review",
                "paint-cracks",
                "evidence-dir",
            ] {
                assert!(text.contains(word), "{shell} completion lacks {word}");
            }
        }
    }

    #[test]
    fn man_writes_a_page_per_visible_subcommand() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("man1");
        man(ManArgs {
            out_dir: out.clone(),
        })
        .unwrap();
        let mut names: Vec<String> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert!(names.contains(&"gcm-inspect.1".to_string()), "{names:?}");
        assert!(
            names.contains(&"gcm-inspect-run.1".to_string()),
            "{names:?}"
        );
        assert!(
            !names
                .iter()
                .any(|n| n.contains("man") || n.contains("completions")),
            "{names:?}"
        );
        let page = std::fs::read_to_string(out.join("gcm-inspect-check-config.1")).unwrap();
        assert!(page.contains(".TH") && page.contains("FILE"), "{page}");
    }
}
