//! Mail notifications against a real SMTP server (aiosmtpd, started by the test): the
//! start, licenses nearing their end and the stop each arrive once, to every recipient,
//! though the mail server was down when the server started (the mails wait and are
//! retried until it is back); mail over STARTTLS and over TLS to a mail server whose
//! certificate the site's CA (`MAIL_SMTP_CA`) issued, and nothing to one whose
//! certificate is another CA's or another name's, nor in plain text to one that offers no
//! STARTTLS; the `DATA_DIR` partition filling (a tmpfs of the test's) announced at each
//! percentage over the threshold; bad mail settings stop the start.

use std::path::Path;

use tests::SmallDisk;
use tests::smtp::{MailServer, SmtpTls};

use crate::common::tls::TestCa;

use super::*;

fn mail_env(port: u16, events: &str) -> Vec<(&'static str, String)> {
    vec![
        ("MAIL_SMTP_HOST", "127.0.0.1".into()),
        ("MAIL_SMTP_PORT", port.to_string()),
        ("MAIL_SMTP_TLS", "none".into()),
        ("MAIL_FROM", "License server <lls@example.com>".into()),
        ("MAIL_TO", "ops@example.com, it@example.com".into()),
        ("MAIL_EVENTS", events.into()),
        ("MAIL_EXPIRY_DAYS", "7".into()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_expiry_and_stop_mails_arrive_once_each_after_the_mail_server_comes_back() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let ending = shared::capability::Right {
        expires_at: Some(now + 3 * 86_400),
        ..right("cad", 3)
    };
    let bo = TestBackoffice::start(vec![ending, right("cam", 2)]).await;
    let dir = tempfile::tempdir().unwrap();
    let mut smtp = MailServer::new(dir.path().join("smtp"), tests::free_port());
    let mut env = base_env(&bo, "string:lls-mail");
    for (k, v) in mail_env(smtp.port, "start,stop,expiry") {
        env = with(env, &[(k, v.as_str())]);
    }
    let mut server = Server::start(&dir.path().join("lls"), env).await;
    rights_arrived(&server, "cad", 3).await;

    // The mail server is down: the start mail is retried, and said so in the log.
    wait_for(T, "a failed send to be logged", || async {
        server
            .log()
            .contains("the mail server did not take a notification")
            .then_some(())
    })
    .await;
    smtp.start().await.unwrap();
    wait_for(
        Duration::from_secs(40),
        "the start and expiry mails",
        || async { (smtp.mails().len() >= 2).then_some(()) },
    )
    .await;
    let started = smtp.with_subject("started");
    assert_eq!(started.len(), 1, "{:?}", smtp.mails());
    assert!(
        started[0].subject().contains("string:lls-mail"),
        "{:?}",
        started[0]
    );
    let to = started[0].header("To").unwrap();
    assert!(
        to.contains("ops@example.com") && to.contains("it@example.com"),
        "{to}"
    );
    let ending = smtp.with_subject("end within 7 days");
    assert_eq!(ending.len(), 1, "{:?}", smtp.mails());
    assert!(
        ending[0]
            .text
            .contains("cad 1.0: 3 seat(s) of ACT-cad end on")
            && !ending[0].text.contains("cam"),
        "{}",
        ending[0].text
    );

    // Nothing twice: the expiry is looked at every second, and mailed once a day.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(smtp.mails().len(), 2, "{:?}", smtp.mails());

    assert!(server.terminate().success());
    let stopped = smtp.with_subject("stopped");
    assert_eq!(stopped.len(), 1, "the stop mail went before the exit");
    assert_eq!(smtp.mails().len(), 3);
    let log = server.log();
    assert_eq!(log.matches("notification sent").count(), 3, "{log}");
}

/// The settings of mail to `127.0.0.1:port` over `tls` (`starttls` or `tls`), trusting
/// `ca`.
fn tls_mail_env(port: u16, tls: &str, ca: &Path, events: &str) -> Vec<(&'static str, String)> {
    let mut env = mail_env(port, events);
    env.retain(|(k, _)| *k != "MAIL_SMTP_TLS");
    env.push(("MAIL_SMTP_TLS", tls.into()));
    env.push(("MAIL_SMTP_CA", ca.display().to_string()));
    env
}

/// A license server `hostid` with the mail settings `mail`, its data in `dir`.
async fn server_mailing(
    bo: &TestBackoffice,
    dir: &Path,
    hostid: &str,
    mail: Vec<(&'static str, String)>,
) -> Server {
    let mut env = base_env(bo, hostid);
    for (k, v) in mail {
        env = with(env, &[(k, v.as_str())]);
    }
    Server::start(dir, env).await
}

/// The log lines of the sends that failed, once there are at least `tries` of them
/// (each a WARN naming its cause).
async fn failed_sends(server: &Server, tries: usize) -> Vec<String> {
    wait_for(
        Duration::from_secs(30),
        "failed sends to be logged",
        || async {
            let lines: Vec<String> = server
                .log()
                .lines()
                .filter(|l| l.contains("the mail server did not take a notification"))
                .map(str::to_owned)
                .collect();
            (lines.len() >= tries).then_some(lines)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_goes_over_starttls_and_over_tls_to_a_mail_server_the_site_ca_certified() {
    let bo = TestBackoffice::start(vec![right("cad", 3)]).await;
    let dir = tempfile::tempdir().unwrap();
    let site = TestCa::new(&dir.path().join("pki"), "site");
    let cert = site.issue("mail");
    for (mode, tls) in [(SmtpTls::StartTls, "starttls"), (SmtpTls::Tls, "tls")] {
        // aiosmtpd requires STARTTLS before any mail (`require_starttls`), or speaks TLS
        // from the first byte: a mail it took came over TLS.
        let mut smtp = MailServer::new(dir.path().join(tls).join("smtp"), tests::free_port())
            .with_tls(mode, &cert);
        smtp.start().await.unwrap();
        let mut server = server_mailing(
            &bo,
            &dir.path().join(tls).join("lls"),
            &format!("string:lls-mail-{tls}"),
            tls_mail_env(smtp.port, tls, &site.cert, "start,stop"),
        )
        .await;
        wait_for(T, &format!("the start mail over {tls}"), || async {
            (smtp.with_subject("started").len() == 1).then_some(())
        })
        .await;
        assert!(server.terminate().success());
        assert_eq!(smtp.with_subject("stopped").len(), 1, "{tls}");
        assert_eq!(smtp.mails().len(), 2, "{tls}: {:?}", smtp.mails());
        let log = server.log();
        assert!(!log.contains("did not take"), "{tls}: {log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mail_server_certified_by_another_ca_or_for_another_name_or_without_starttls_gets_no_mail()
 {
    let bo = TestBackoffice::start(vec![right("cad", 3)]).await;
    let dir = tempfile::tempdir().unwrap();
    let site = TestCa::new(&dir.path().join("pki"), "site");
    let other = TestCa::new(&dir.path().join("other-pki"), "other");
    let right_cert = site.issue("mail");
    for (case, mode, tls, cert, cause) in [
        (
            "another CA",
            Some(SmtpTls::StartTls),
            "starttls",
            other.issue("mail"),
            "UnknownIssuer",
        ),
        (
            "another name",
            Some(SmtpTls::Tls),
            "tls",
            site.issue_for("mail-elsewhere", &["mail.elsewhere.example"]),
            "certificate not valid for name \"127.0.0.1\"",
        ),
        (
            "no STARTTLS offered",
            None,
            "starttls",
            site.issue("unused"),
            "STARTTLS",
        ),
    ] {
        let smtp_dir = dir.path().join(case.replace(' ', "-")).join("smtp");
        let port = tests::free_port();
        let mut smtp = match mode {
            Some(mode) => MailServer::new(smtp_dir.clone(), port).with_tls(mode, &cert),
            None => MailServer::new(smtp_dir.clone(), port),
        };
        smtp.start().await.unwrap();
        let server = server_mailing(
            &bo,
            &dir.path().join(case.replace(' ', "-")).join("lls"),
            "string:lls-mail-attack",
            tls_mail_env(port, tls, &site.cert, "start"),
        )
        .await;
        // Refused, said at WARN with the cause, and retried.
        let failed = failed_sends(&server, 2).await;
        for line in &failed {
            assert!(line.contains("WARN"), "{case}: {line}");
            assert!(line.contains(cause), "{case}: the cause is named: {line}");
        }
        assert!(smtp.mails().is_empty(), "{case}: {:?}", smtp.mails());

        // The same mail server with the site's certificate and STARTTLS: the waiting mail
        // goes, once.
        smtp.stop();
        let mut fixed = MailServer::new(smtp_dir, port)
            .with_tls(mode.unwrap_or(SmtpTls::StartTls), &right_cert);
        fixed.start().await.unwrap();
        wait_for(
            Duration::from_secs(40),
            &format!("{case}: the mail after the fix"),
            || async { (fixed.with_subject("started").len() == 1).then_some(()) },
        )
        .await;
        assert_eq!(fixed.mails().len(), 1, "{case}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filling_data_partition_is_mailed_at_each_percentage_over_the_threshold() {
    let Some(disk) = SmallDisk::mount("4m") else {
        return;
    };
    let bo = TestBackoffice::start(vec![right("cad", 3)]).await;
    let dir = tempfile::tempdir().unwrap();
    let mut smtp = MailServer::new(dir.path().join("smtp"), tests::free_port());
    smtp.start().await.unwrap();
    let mut mail = mail_env(smtp.port, "disk");
    mail.push(("MAIL_DISK_THRESHOLD", "50".into()));
    let server = server_mailing(&bo, &disk.path().join("lls"), "string:lls-disk", mail).await;
    rights_arrived(&server, "cad", 3).await;
    let told = |n: usize| {
        let smtp = &smtp;
        async move {
            wait_for(T, &format!("{n} disk mails"), || async {
                let mails = smtp.with_subject("% full");
                (mails.len() >= n).then_some(())
            })
            .await;
            // Nothing more: the partition is looked at every second.
            tokio::time::sleep(Duration::from_secs(3)).await;
            let mut subjects: Vec<String> = smtp
                .with_subject("% full")
                .iter()
                .map(|m| m.subject())
                .collect();
            subjects.sort();
            subjects
        }
    };
    let has = |subjects: &[String], percent: u8| {
        subjects
            .iter()
            .filter(|s| s.contains(&format!("partition is {percent}% full")))
            .count()
    };

    // Under the threshold: nothing.
    disk.fill_to(45);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(smtp.mails().is_empty(), "{:?}", smtp.mails());
    // The threshold reached: one mail, however long it stays there.
    disk.fill_to(50);
    let s = told(1).await;
    assert_eq!((s.len(), has(&s, 50)), (1, 1), "{s:?}");
    // Each percentage more is news, and each one less while still over it.
    disk.fill_to(51);
    let s = told(2).await;
    assert_eq!((s.len(), has(&s, 51)), (2, 1), "{s:?}");
    disk.fill_to(50);
    let s = told(3).await;
    assert_eq!((s.len(), has(&s, 50)), (3, 2), "{s:?}");
    // Back under it: nothing; over it again: news again.
    disk.fill_to(40);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(smtp.with_subject("% full").len(), 3);
    disk.fill_to(52);
    let s = told(4).await;
    assert_eq!((s.len(), has(&s, 52)), (4, 1), "{s:?}");
    // Quoted-printable: its soft line breaks undone.
    let body = smtp.with_subject("52% full")[0].text.replace("=\n", "");
    assert!(
        body.contains(&disk.path().join("lls").display().to_string())
            && body.contains("MAIL_DISK_THRESHOLD 50%"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_mail_settings_stop_the_start_naming_the_setting() {
    let bo = TestBackoffice::start(vec![right("cad", 3)]).await;
    let dir = tempfile::tempdir().unwrap();
    let not_pem = dir.path().join("ca.pem");
    std::fs::write(&not_pem, "not a certificate\n").unwrap();
    for (setting, value, says) in [
        ("MAIL_TO", "", "MAIL_TO is required"),
        (
            "MAIL_TO",
            "ops@example.com, nobody",
            "`nobody` is not a mail address",
        ),
        ("MAIL_SMTP_PORT", "0", "MAIL_SMTP_PORT `0` is not a port"),
        (
            "MAIL_SMTP_TLS",
            "ssl",
            "MAIL_SMTP_TLS `ssl` is not one of none, starttls, tls",
        ),
        (
            "MAIL_SMTP_CA",
            "/nonexistent/ca.pem",
            "MAIL_SMTP_CA `/nonexistent/ca.pem` cannot be read",
        ),
        (
            "MAIL_SMTP_CA",
            not_pem.to_str().unwrap(),
            "MAIL_SMTP_CA is set but MAIL_SMTP_TLS is none",
        ),
    ] {
        let mut env = base_env(&bo, "string:lls-bad-mail");
        for (k, v) in mail_env(25, "start") {
            env = with(env, &[(k, v.as_str())]);
        }
        let env = with(env, &[(setting, value)]);
        let said = refused_start(&env, dir.path());
        assert!(said.contains(says), "{setting}={value}: {said}");
    }
    let mut env = base_env(&bo, "string:lls-bad-mail");
    for (k, v) in tls_mail_env(25, "starttls", &not_pem, "start") {
        env = with(env, &[(k, v.as_str())]);
    }
    let said = refused_start(&env, dir.path());
    assert!(
        said.contains("MAIL_SMTP_CA") && said.contains("holds no CERTIFICATE"),
        "{said}"
    );
}
