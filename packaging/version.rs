//! Build script of the packaged crates (`build = "../packaging/version.rs"` in
//! `license-server/` and `backoffice/`): sets `BUILD_VERSION`, which `--version` prints, to
//! `VERSION (commit HASH)`.
//!
//! The commit comes from git when the workspace is a git checkout of its own; else from
//! `packaging/COMMIT`, which `git archive` fills in (`export-subst` in `.gitattributes`),
//! so a source tarball names its commit too; else it is `unknown`. No network, and a
//! build without git or without `.git` still succeeds.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Hex digits of the commit shown (as `git rev-parse --short=12`).
const SHORT: usize = 12;

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    // The packaged crates sit directly under the workspace root.
    let workspace = manifest.parent().expect("a crate inside the workspace");
    let archived = workspace.join("packaging/COMMIT");
    println!("cargo:rerun-if-changed={}", archived.display());

    let commit = from_git(workspace)
        .or_else(|| from_archive(&archived))
        .unwrap_or_else(|| "unknown".to_owned());
    let version = std::env::var("CARGO_PKG_VERSION").expect("set by cargo");
    println!("cargo:rustc-env=BUILD_VERSION={version} (commit {commit})");
}

/// Runs git in `dir`; `None` when git is missing or fails.
fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let text = text.trim();
    (out.status.success() && !text.is_empty()).then(|| text.to_owned())
}

/// The checked-out commit, when `workspace` is the top of a git work tree (not a tarball
/// unpacked inside some other repository), and tells cargo which files to watch so a new
/// commit or checkout rebuilds with the new hash.
fn from_git(workspace: &Path) -> Option<String> {
    let top = PathBuf::from(git(workspace, &["rev-parse", "--show-toplevel"])?);
    if top.canonicalize().ok()? != workspace.canonicalize().ok()? {
        return None;
    }
    let commit = git(
        workspace,
        &["rev-parse", &format!("--short={SHORT}"), "HEAD"],
    )?;

    let git_path = |p: &str| {
        git(
            workspace,
            &["rev-parse", "--path-format=absolute", "--git-path", p],
        )
        .map(PathBuf::from)
    };
    // Only existing files: cargo reruns a build script on every build while a path it
    // watches is missing.
    let watch = |p: &Path| {
        if p.exists() {
            println!("cargo:rerun-if-changed={}", p.display());
        }
    };
    if let Some(head) = git_path("HEAD") {
        watch(&head);
    }
    // On a branch, a commit moves the branch's ref (a loose file, or packed-refs with a
    // new loose file appearing in its folder).
    if let Some(branch) = git(workspace, &["symbolic-ref", "-q", "HEAD"])
        && let Some(loose) = git_path(&branch)
    {
        if loose.exists() {
            watch(&loose);
        } else {
            if let Some(packed) = git_path("packed-refs") {
                watch(&packed);
            }
            if let Some(folder) = loose.parent() {
                watch(folder);
            }
        }
    }
    Some(commit)
}

/// The commit `git archive` wrote into `packaging/COMMIT`; `None` in a checkout, where the
/// file still holds its unexpanded placeholder.
fn from_archive(file: &Path) -> Option<String> {
    let text = std::fs::read_to_string(file).ok()?;
    let hash = text.trim();
    (hash.len() >= SHORT && hash.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| hash[..SHORT].to_owned())
}
