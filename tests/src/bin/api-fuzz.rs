//! Schema-driven fuzzing of both services' HTTP APIs with schemathesis (PyPI;
//! `scripts/test` installs it and runs this after the tests).
//!
//! Starts the back office (in-process, SQLite) with a fixture and a license server (its
//! binary) with rights from it, then runs `schemathesis run` against each served OpenAPI
//! document, as each kind of caller: the back office as a producer administrator, as an
//! account user and as a license server (device token); the license server as its
//! operator and as its pair partner. Every run is bounded in examples per operation and
//! in time, and fails on any 5xx, any status an operation does not document, any answer
//! whose body or headers break the documented schema (error answers included: the
//! contract's JSON) and any wrong content type.
//!
//! cargo build --bins && target/debug/api-fuzz [--seconds 20] [--examples 30] [--seed N]

use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use tests::{BackOffice, Backend, LicenseServer};

/// What every run checks.
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
                      response_headers_conformance,response_schema_conformance";

struct Bounds {
    seconds: u64,
    examples: u64,
    seed: u64,
}

/// How a run ended.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Passed,
    /// The API broke a check.
    Failed,
    /// Only schemathesis itself broke (an error of its own while generating data, no
    /// check failed): reported, not held against the API.
    ToolError,
}

/// One `schemathesis run` of the document at `base` as the caller `token` names, limited
/// to the operations `only` selects (`--include-tag` values). Its report goes to stdout,
/// and its JUnit report to `dir`, which tells the API's failures from the tool's errors.
fn run(
    name: &str,
    base: &str,
    token: &str,
    only: &[&str],
    b: &Bounds,
    dir: &std::path::Path,
) -> Result<Outcome> {
    println!("api-fuzz: {name}");
    let junit = dir.join(format!("{}.xml", name.replace([' ', ','], "-")));
    let mut cmd = Command::new("schemathesis");
    cmd.arg("run")
        .arg(format!("{base}/api/v1/openapi.json"))
        .args(["--url", base])
        .args(["--checks", CHECKS])
        .args(["--header", &format!("Authorization: Bearer {token}")])
        .args(["--max-examples", &b.examples.to_string()])
        .args(["--max-time", &b.seconds.to_string()])
        .args(["--seed", &b.seed.to_string()])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args(["--request-timeout", "10", "--workers", "2"])
        .args(["--suppress-health-check", "all", "--no-shrink"])
        .args(["--report", "junit", "--report-junit-path"])
        .arg(&junit)
        // Its caches and reports stay out of the working tree.
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .env("SCHEMATHESIS_TELEMETRY", "false");
    for tag in only {
        cmd.args(["--include-tag", tag]);
    }
    // Signing out would end the session the run goes on with.
    cmd.args(["--exclude-path", "/api/v1/auth/logout"]);
    let status = cmd
        .status()
        .context("cannot run schemathesis (pip install schemathesis; scripts/test does)")?;
    if status.success() {
        return Ok(Outcome::Passed);
    }
    let report = std::fs::read_to_string(&junit).unwrap_or_default();
    Ok(
        if report.contains("<error") && !report.contains("<failure") {
            Outcome::ToolError
        } else {
            Outcome::Failed
        },
    )
}

fn args() -> Result<Bounds> {
    let mut b = Bounds {
        seconds: 20,
        examples: 30,
        seed: u64::from(std::process::id()) ^ shared::now_unix().unsigned_abs(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || -> Result<u64> { Ok(it.next().context("a number")?.parse()?) };
        match a.as_str() {
            "--seconds" => b.seconds = value()?,
            "--examples" => b.examples = value()?,
            "--seed" => b.seed = value()?,
            "-h" | "--help" => {
                println!("api-fuzz [--seconds 20] [--examples 30] [--seed N]");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(b)
}

#[tokio::main]
async fn main() -> Result<()> {
    let b = args()?;
    let started = Instant::now();
    println!("api-fuzz: seed {} (--seed to repeat)", b.seed);
    let bo = BackOffice::start(Backend::Sqlite).await?;
    let fx = bo.fixture(&["cad", "cam"], 50).await?;
    let tmp = tempfile::tempdir()?;
    let server = LicenseServer::builder(&tmp.path().join("lls"))
        .envs(&[
            ("HOSTID", "string:api-fuzz"),
            ("BACKOFFICE_URL", bo.url.as_str()),
            ("BACKOFFICE_TOKEN", fx.device_token.as_str()),
            ("RIGHTS_IDS", &format!("{}:20", fx.activation_id)),
            ("PAIR_TOKEN", "api-fuzz-pair-token"),
            // A full session the fuzzer opens lapses at once, so that the operations that
            // act are fuzzed past `SESSION_HELD` for the rest of the run.
            ("ADMIN_SESSION_IDLE", "1s"),
        ])
        .env(
            "BACKOFFICE_PUBLIC_KEY",
            bo.public_key_path().display().to_string(),
        )
        .start()
        .await?;
    tests::eventually(
        std::time::Duration::from_secs(30),
        "the license server's rights",
        || async {
            let f = tests::license_server::feature(&server, "cad").await?;
            (f["count"] == 20).then_some(())
        },
    )
    .await;

    // The account user fuzzed is of an account of its own: its runs revoke device tokens
    // and unmap rights, which would leave the license server (whose `reread` then answers
    // `UNAVAILABLE`, as documented) without a back office. And the license server is
    // fuzzed first, while its back office still answers it.
    let other = bo.fixture(&["fuzzed"], 5).await?;
    let runs: [(&str, &str, String, &[&str]); 5] = [
        (
            "license server, operator",
            &server.url,
            server.admin_token(),
            &[],
        ),
        (
            "license server, pair partner",
            &server.url,
            "api-fuzz-pair-token".into(),
            &["pair"],
        ),
        (
            "back office, producer administrator",
            &bo.url,
            fx.admin.token.clone(),
            &[],
        ),
        (
            "back office, account user",
            &bo.url,
            other.user.token.clone(),
            &["account", "auth"],
        ),
        (
            "back office, license server",
            &bo.url,
            fx.device_token.clone(),
            &["capability"],
        ),
    ];
    let reports = tempfile::tempdir()?;
    let mut failed = Vec::new();
    for (name, base, token, only) in &runs {
        match run(name, base, token, only, &b, reports.path())? {
            Outcome::Passed => {}
            Outcome::Failed => failed.push(*name),
            Outcome::ToolError => println!(
                "api-fuzz: {name}: schemathesis failed on its own (above), no check failed"
            ),
        }
    }
    println!(
        "api-fuzz: {} of {} runs passed in {:.0} s (seed {})",
        runs.len() - failed.len(),
        runs.len(),
        started.elapsed().as_secs_f64(),
        b.seed
    );
    if !failed.is_empty() {
        bail!("schemathesis found problems: {}", failed.join("; "));
    }
    Ok(())
}
