//! Man pages and bash, zsh and fish completions generated from a binary's own clap
//! definition.
//!
//! Each binary calls [`generate_if_requested`] first thing in `main`, which gives it a
//! hidden `generate-assets DIR` entry point outside its own clap definition (so the
//! definition, its `--help` and its completions stay exactly what users see), and hands
//! its `clap::Command` to [`write`]: the pages and completions always describe the binary
//! that is packaged with them, and no second copy of any CLI exists.

use std::ffi::OsStr;
use std::io;
use std::path::{Path, PathBuf};

use clap_complete::Shell;

/// The shells completions are written for.
pub const SHELLS: [Shell; 3] = [Shell::Bash, Shell::Zsh, Shell::Fish];

/// The hidden entry point: `BINARY generate-assets DIR`.
pub const SUBCOMMAND: &str = "generate-assets";

/// The manual the pages belong to (the `.TH` line's last field).
const MANUAL: &str = "Licensing platform";

/// When the process was started as `BINARY generate-assets DIR`, writes the man pages (in
/// manual `section`) and completions of `C` into `DIR`, lists them on standard output and
/// exits; otherwise returns at once and `main` goes on.
pub fn generate_if_requested<C: clap::CommandFactory>(section: &str) {
    let mut args = std::env::args_os().skip(1);
    if args.next().as_deref() != Some(OsStr::new(SUBCOMMAND)) {
        return;
    }
    let cmd = C::command();
    let matches = clap::Command::new(SUBCOMMAND)
        .bin_name(format!("{} {SUBCOMMAND}", cmd.get_name()))
        .about("Write man pages and shell completions into DIR (used to build the packages)")
        .arg(
            clap::Arg::new("dir")
                .value_name("DIR")
                .required(true)
                .value_parser(clap::value_parser!(PathBuf)),
        )
        .get_matches_from(std::env::args_os().skip(1));
    let dir = matches
        .get_one::<PathBuf>("dir")
        .expect("DIR is a required argument");
    match write(cmd, section, dir) {
        Ok(files) => {
            for f in files {
                println!("{}", f.display());
            }
            std::process::exit(0);
        }
        Err(e) => {
            eprintln!("error: cannot write into {}: {e}", dir.display());
            std::process::exit(1);
        }
    }
}

/// Writes `dir/man/NAME.SECTION` for the command and for every visible subcommand
/// (`license-server-pair-detach.8`, …) and `dir/completions/` for [`SHELLS`] (files named
/// as `clap_complete` names them: `NAME.bash`, `_NAME`, `NAME.fish`). Returns the files.
pub fn write(mut cmd: clap::Command, section: &str, dir: &Path) -> io::Result<Vec<PathBuf>> {
    // `help` is a subcommand to complete, not one to have a page of its own.
    let mut pages = cmd.clone().disable_help_subcommand(true);
    pages.build();
    cmd.build();
    let man_dir = dir.join("man");
    let completions_dir = dir.join("completions");
    std::fs::create_dir_all(&man_dir)?;
    std::fs::create_dir_all(&completions_dir)?;

    // Every page's footer names the binary and its version, subcommands' pages too.
    let source = format!(
        "{} {}",
        cmd.get_name(),
        cmd.get_version().unwrap_or_default()
    );
    let mut written = Vec::new();
    write_pages(&pages, section, &source, &man_dir, &mut written)?;
    let bin = cmd.get_name().to_owned();
    for shell in SHELLS {
        written.push(clap_complete::generate_to(
            shell,
            &mut cmd,
            &bin,
            &completions_dir,
        )?);
    }
    Ok(written)
}

fn write_pages(
    cmd: &clap::Command,
    section: &str,
    source: &str,
    dir: &Path,
    written: &mut Vec<PathBuf>,
) -> io::Result<()> {
    let page = clap_mangen::Man::new(cmd.clone())
        .section(section)
        .source(source)
        .manual(MANUAL);
    written.push(page.generate_to(dir)?);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_pages(sub, section, source, dir, written)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser, Subcommand};

    /// A CLI shaped like the services': subcommands, a nested one, a hidden one.
    #[derive(Parser)]
    #[command(name = "demo-server", version = "1.2.3 (commit 0123456789ab)")]
    struct Demo {
        #[command(subcommand)]
        command: DemoCommand,
    }

    #[derive(Subcommand)]
    enum DemoCommand {
        /// Run the server.
        Serve {
            /// TOML settings file.
            #[arg(long)]
            config: Option<PathBuf>,
        },
        /// Pair operations.
        #[command(subcommand)]
        Pair(PairCommand),
        /// Hidden.
        #[command(hide = true)]
        Internal,
    }

    #[derive(Subcommand)]
    enum PairCommand {
        /// Remove the backup.
        Detach,
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn writes_a_page_per_visible_subcommand_and_none_for_hidden_ones_or_help() {
        let out = tempfile::tempdir().unwrap();
        write(Demo::command(), "8", out.path()).unwrap();
        assert_eq!(
            names(&out.path().join("man")),
            [
                "demo-server-pair-detach.8",
                "demo-server-pair.8",
                "demo-server-serve.8",
                "demo-server.8"
            ]
        );
        let top = std::fs::read_to_string(out.path().join("man/demo-server.8")).unwrap();
        assert!(
            top.contains(
                ".TH demo-server 8  \"demo-server 1.2.3 (commit 0123456789ab)\" \"Licensing platform\""
            ),
            "{top}"
        );
        assert!(
            !top.contains("internal"),
            "hidden subcommand in the page: {top}"
        );
        let serve = std::fs::read_to_string(out.path().join("man/demo-server-serve.8")).unwrap();
        assert!(serve.contains("\\-\\-config"), "{serve}");
        assert!(
            serve.contains(".TH demo-server-serve 8  \"demo-server 1.2.3 (commit 0123456789ab)\""),
            "{serve}"
        );
    }

    #[test]
    fn writes_completions_for_bash_zsh_and_fish() {
        let out = tempfile::tempdir().unwrap();
        write(Demo::command(), "1", out.path()).unwrap();
        let dir = out.path().join("completions");
        assert_eq!(
            names(&dir),
            ["_demo-server", "demo-server.bash", "demo-server.fish"]
        );
        for file in names(&dir) {
            let text = std::fs::read_to_string(dir.join(&file)).unwrap();
            assert!(text.contains("serve"), "{file} lacks `serve`");
            assert!(text.contains("detach"), "{file} lacks `pair detach`");
        }
    }
}
