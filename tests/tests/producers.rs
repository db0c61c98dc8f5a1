//! The client library as producers use it, against a real back office and license
//! server: the Rust example (`client/examples/checkout.rs`), the C program
//! (`client-ffi/examples/checkout.c`, compiled here with `cc` against the committed header
//! and `liblicensing.so`) and the Python example (`client-ffi/examples/checkout.py`, the
//! same library through ctypes). Each checks out, sees `NO_LICENSE_AVAILABLE` where the
//! seats are used up, and returns; the server is asked what it holds meanwhile. And the C
//! ABI's borrowing (`client-ffi/examples/borrow.c`): borrow, keep, verify offline with
//! the server stopped, refuse a tampered borrow, give it back early.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use tests::{BackOffice, Backend, LicenseServer, bin_dir, eventually, free_port};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

const WAIT: Duration = Duration::from_secs(30);

/// The repository's root.
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is in the repository")
        .to_path_buf()
}

/// A file the build makes besides the binaries, which must have been built: `how` says
/// how.
fn built(relative: &str, how: &str) -> PathBuf {
    let p = bin_dir().join(relative);
    assert!(
        p.exists(),
        "{} is not built; run `{how}` first (`cargo test --workspace` builds it)",
        p.display()
    );
    p
}

/// `liblicensing.so` as this test build made it (the tests crate depends on the FFI
/// crate, which builds it into `deps/`), else as `cargo build` left it.
fn library() -> PathBuf {
    let deps = bin_dir().join("deps/liblicensing.so");
    if deps.exists() {
        return deps;
    }
    built("liblicensing.so", "cargo build -p licensing-client-ffi")
}

/// A back office and a license server serving one seat of each of `features`, leases
/// of `lease` (short, so renewals show), logging each answer (debug).
struct Site {
    _bo: BackOffice,
    server: LicenseServer,
    producer_key: PathBuf,
    _tmp: tempfile::TempDir,
}

async fn site(features: &[&str], lease: &str) -> Result<Site> {
    let bo = BackOffice::start(Backend::Sqlite).await?;
    let fx = bo.fixture(features, 1).await?;
    let tmp = tempfile::tempdir()?;
    let hostid = format!(
        "string:lls-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let env: Vec<(String, String)> = [
        ("HOSTID", hostid),
        ("BACKOFFICE_URL", bo.url.clone()),
        ("BACKOFFICE_TOKEN", fx.device_token.clone()),
        (
            "BACKOFFICE_PUBLIC_KEY",
            bo.public_key_path().display().to_string(),
        ),
        ("RIGHTS_IDS", format!("{}:1", fx.activation_id)),
        ("CAPABILITY_POLL_INTERVAL", "1s".into()),
        ("BACKOFF_MAX", "500ms".into()),
        ("LEASE_DURATION", lease.into()),
        // Each answer logged, to see the returns.
        ("RUST_LOG", "info,http_kit=debug".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let server = LicenseServer::start("lls", &tmp.path().join("lls"), free_port(), &env).await?;
    for feature in features {
        eventually(WAIT, "the seats from the back office", || async {
            let f: Value = reqwest::get(format!("{}/api/v1/features", server.url))
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            f.as_array()?
                .iter()
                .any(|f| f["feature"] == *feature && f["count"] == 1)
                .then_some(())
        })
        .await;
    }
    Ok(Site {
        producer_key: bo.public_key_path(),
        _bo: bo,
        server,
        _tmp: tmp,
    })
}

/// The lease IDs a program printed as `checked out FEATURE: lease ID until T`.
fn leases_printed(lines: &[String]) -> Vec<(String, String)> {
    lines
        .iter()
        .filter_map(|l| {
            let rest = l.strip_prefix("checked out ")?;
            let (feature, rest) = rest.split_once(": lease ")?;
            let (id, _) = rest.split_once(" until ")?;
            Some((feature.to_owned(), id.to_owned()))
        })
        .collect()
}

/// Runs a client program that prints what it does line by line and, after `holding`,
/// waits for a line on its standard input before it returns its leases. While it holds
/// them, the server must hold the leases it printed; after it ends, none, and the
/// server's log must show each return. Returns what it printed.
async fn run_holding(mut cmd: Command, site: &Site) -> Result<Vec<String>> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("start the program")?;
    let mut stdout = BufReader::new(child.stdout.take().context("stdout")?).lines();
    let mut stderr = child.stderr.take().context("stderr")?;
    let errors = tokio::spawn(async move {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text).await;
        text
    });
    let mut lines = Vec::new();
    let held = tokio::time::timeout(Duration::from_secs(90), async {
        while let Some(line) = stdout.next_line().await? {
            let holding = line == "holding";
            lines.push(line);
            if holding {
                return Ok::<bool, std::io::Error>(true);
            }
        }
        Ok(false)
    })
    .await
    .context("the program did not get to `holding` in 90 s")??;
    if !held {
        let status = child.wait().await?;
        anyhow::bail!(
            "the program ended before `holding` ({status}): {lines:?}\n{}",
            errors.await?
        );
    }
    let printed = leases_printed(&lines);
    ensure!(!printed.is_empty(), "no lease printed: {lines:?}");
    for (feature, id) in &printed {
        let held = site.server.leases(feature).await?;
        ensure!(
            held.iter().any(|l| l["lease_id"] == id.as_str()),
            "the server does not hold lease {id} of {feature}: {held:?}"
        );
    }

    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(b"return\n")
        .await?;
    let status = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = stdout.next_line().await? {
            lines.push(line);
        }
        child.wait().await
    })
    .await
    .context("the program did not end in 30 s")??;
    ensure!(
        status.success(),
        "the program failed ({status}): {lines:?}\n{}",
        errors.await?
    );
    for (feature, id) in &printed {
        ensure!(
            lines.contains(&format!("returned {id}")),
            "{id} not returned: {lines:?}"
        );
        let held = site.server.leases(feature).await?;
        ensure!(held.is_empty(), "the server still holds {held:?}");
        let log = site.server.log_text();
        ensure!(
            log.lines().any(|l| l.contains("DELETE")
                && l.contains(&format!("/api/v1/leases/{id}"))
                && l.contains("204")),
            "the server's log shows no return of {id}:\n{}",
            tests::tail(&log, 30)
        );
    }
    Ok(lines)
}

#[tokio::test]
async fn rust_example_checks_out_renews_in_the_background_verifies_and_returns() -> Result<()> {
    let example = built(
        "examples/checkout",
        "cargo build -p licensing-client --examples",
    );
    let site = site(&["cad"], "3s").await?;
    let out = Command::new(example)
        .arg(&site.server.url)
        .arg(&site.producer_key)
        .arg("cad")
        .output()
        .await?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let printed = leases_printed(&lines);
    let [(_, id)] = printed.as_slice() else {
        anyhow::bail!("one lease expected: {lines:?}");
    };
    let expected = [
        "renewed in the background: until ".to_owned(),
        "grant verified: 1 seat of cad for ".to_owned(),
        format!("returned {id}"),
    ];
    ensure!(
        lines.len() == 4
            && lines[1..]
                .iter()
                .zip(&expected)
                .all(|(line, start)| line.starts_with(start.as_str())),
        "{lines:?}"
    );
    let log = site.server.log_text();
    for (method, status) in [("PUT", "200"), ("DELETE", "204")] {
        ensure!(
            log.lines().any(|l| l.contains(method)
                && l.contains(&format!("/api/v1/leases/{id}"))
                && l.contains(status)),
            "the server's log shows no {method} of {id}:\n{}",
            tests::tail(&log, 30)
        );
    }
    ensure!(site.server.leases("cad").await?.is_empty());
    Ok(())
}

/// Compiles `client-ffi/examples/checkout.c` against the committed header with warnings
/// as errors, linked with `link` (arguments for `cc`), into `program`.
async fn compile_c(program: &Path, link: &[String]) -> Result<()> {
    compile_example("checkout.c", program, link).await
}

/// Compiles `client-ffi/examples/{source}` as [`compile_c`] does.
async fn compile_example(source: &str, program: &Path, link: &[String]) -> Result<()> {
    let cc = Command::new("cc")
        .args([
            "-std=c11",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-pthread",
            "-D_DEFAULT_SOURCE",
        ])
        .arg(repo().join("client-ffi/examples").join(source))
        .arg("-I")
        .arg(repo().join("client-ffi/include"))
        .args(link)
        .arg("-o")
        .arg(program)
        .output()
        .await
        .context("run cc")?;
    ensure!(
        cc.status.success(),
        "cc failed:\n{}",
        String::from_utf8_lossy(&cc.stderr)
    );
    Ok(())
}

#[tokio::test]
async fn c_program_checks_out_from_two_threads_sees_no_license_available_and_returns() -> Result<()>
{
    let library = library();
    let lib_dir = library.parent().context("the library's directory")?;
    let dir = tempfile::tempdir()?;
    let program = dir.path().join("checkout");
    compile_c(
        &program,
        &[
            format!("-L{}", lib_dir.display()),
            "-llicensing".into(),
            format!("-Wl,-rpath,{}", lib_dir.display()),
        ],
    )
    .await?;
    let static_program = dir.path().join("checkout-static");
    compile_c(
        &static_program,
        &[
            lib_dir.join("liblicensing.a").display().to_string(),
            "-lpthread".into(),
            "-ldl".into(),
            "-lm".into(),
        ],
    )
    .await?;

    let site = site(&["cad", "cam"], "4s").await?;
    let mut cmd = Command::new(&program);
    cmd.arg(&site.server.url)
        .arg(&site.producer_key)
        .args(["cad", "cam"]);
    let lines = run_holding(cmd, &site).await?;
    let features: Vec<String> = leases_printed(&lines).into_iter().map(|(f, _)| f).collect();
    ensure!(features.len() == 2, "two leases expected: {lines:?}");
    ensure!(features.contains(&"cad".into()) && features.contains(&"cam".into()));
    ensure!(
        lines
            .iter()
            .any(|l| l.starts_with("second client, cad: NO_LICENSE_AVAILABLE (")),
        "{lines:?}"
    );
    ensure!(
        lines
            .iter()
            .any(|l| l.starts_with("renewed ") && l.ends_with("(OK)")),
        "{lines:?}"
    );

    // The same program linked with the static library, the seats free again.
    let out = Command::new(&static_program)
        .arg(&site.server.url)
        .arg(&site.producer_key)
        .args(["cad", "cam", "--no-wait"])
        .output()
        .await?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success() && text.matches("returned ").count() == 2,
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(site.server.leases("cad").await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn python_example_checks_out_through_ctypes_sees_no_license_available_and_returns()
-> Result<()> {
    let library = library();
    let site = site(&["cad"], "30s").await?;
    let mut cmd = Command::new("python3");
    cmd.arg(repo().join("client-ffi/examples/checkout.py"))
        .arg(&library)
        .arg(&site.server.url)
        .arg(&site.producer_key)
        .arg("cad");
    let lines = run_holding(cmd, &site).await?;
    ensure!(leases_printed(&lines).len() == 1, "{lines:?}");
    ensure!(
        lines
            .iter()
            .any(|l| l.starts_with("second client, cad: NO_LICENSE_AVAILABLE (")),
        "{lines:?}"
    );
    Ok(())
}

/// Runs the borrow example with `args`: its exit status and standard output.
async fn borrow_c(program: &Path, args: &[&str]) -> Result<(bool, String)> {
    let out = Command::new(program).args(args).output().await?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
    ))
}

#[tokio::test]
async fn c_program_borrows_verifies_offline_with_the_server_stopped_and_gives_back_early()
-> Result<()> {
    use std::os::unix::fs::PermissionsExt;

    let library = library();
    let lib_dir = library.parent().context("the library's directory")?;
    let dir = tempfile::tempdir()?;
    let program = dir.path().join("borrow");
    compile_example(
        "borrow.c",
        &program,
        &[
            format!("-L{}", lib_dir.display()),
            "-llicensing".into(),
            format!("-Wl,-rpath,{}", lib_dir.display()),
        ],
    )
    .await?;
    let bo = BackOffice::start(Backend::Sqlite).await?;
    let fx = bo.fixture(&["cad"], 1).await?;
    fx.patch_line_item(serde_json::json!({"borrowable": true, "max_borrow_secs": 3600}))
        .await?;
    let mut server =
        LicenseServer::of_account(&bo, &fx, &dir.path().join("lls"), "string:lls-borrow")
            .env("RIGHTS_IDS", format!("{}:1", fx.activation_id))
            .env("CAPABILITY_POLL_INTERVAL", "1s")
            .start()
            .await?;
    eventually(WAIT, "the seat from the back office", || async {
        let f = tests::license_server::feature(&server, "cad").await?;
        (f["count"] == 1).then_some(())
    })
    .await;
    let key = bo.public_key_path().display().to_string();
    let kept = dir.path().join("cad.borrow").display().to_string();
    let url = server.url.clone();

    // Longer than the line item allows: the contract's error, nothing borrowed.
    let (ok, out) = borrow_c(&program, &["borrow", &url, &key, "cad", "7200", &kept]).await?;
    ensure!(
        !ok && out.starts_with("borrow: VALIDATION_ERROR ("),
        "{out}"
    );
    let (ok, out) = borrow_c(&program, &["borrow", &url, &key, "cad", "600", &kept]).await?;
    ensure!(ok && out.starts_with("borrowed cad until "), "{out}");
    let mode = std::fs::metadata(&kept)?.permissions().mode() & 0o777;
    ensure!(mode == 0o600, "the kept borrow is mode {mode:o}");
    let held = server.leases("cad").await?;
    ensure!(held.len() == 1 && held[0]["borrowed"] == true, "{held:?}");
    let (ok, out) = borrow_c(&program, &["borrow", &url, &key, "cad", "600", &kept]).await?;
    ensure!(
        !ok && out.starts_with("borrow: NO_LICENSE_AVAILABLE ("),
        "the seat is borrowed: {out}"
    );

    // Offline: the server stopped, the borrow verifies with the producer's key alone.
    server.terminate();
    let (ok, out) = borrow_c(&program, &["verify", &key, &kept]).await?;
    ensure!(ok && out.starts_with("verified offline until "), "{out}");
    // A borrow edited to hold two seats does not.
    let text = std::fs::read_to_string(&kept)?;
    ensure!(text.contains("\"count\":1"), "{text}");
    let forged = dir.path().join("forged.borrow");
    std::fs::write(&forged, text.replace("\"count\":1", "\"count\":2"))?;
    let forged = forged.display().to_string();
    let (ok, out) = borrow_c(&program, &["verify", &key, &forged]).await?;
    ensure!(!ok && out.starts_with("verify: UNTRUSTED ("), "{out}");

    // Given back early (from another process): the seat is free; twice is NOT_FOUND.
    server.restart().await?;
    let (ok, out) = borrow_c(&program, &["return", &server.url, &key, &kept]).await?;
    ensure!(ok && out == "returned", "{out}");
    ensure!(server.leases("cad").await?.is_empty());
    let (ok, out) = borrow_c(&program, &["return", &server.url, &key, &kept]).await?;
    ensure!(!ok && out.starts_with("return: NOT_FOUND ("), "{out}");
    Ok(())
}
