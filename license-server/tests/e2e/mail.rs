//! Mail notifications against a real SMTP server (aiosmtpd, started by the test): the
//! start, licenses nearing their end and the stop each arrive once, to every recipient,
//! though the mail server was down when the server started (the mails wait and are
//! retried until it is back); bad mail settings stop the start.

use tests::smtp::MailServer;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_mail_settings_stop_the_start_naming_the_setting() {
    let bo = TestBackoffice::start(vec![right("cad", 3)]).await;
    let dir = tempfile::tempdir().unwrap();
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
    ] {
        let mut env = base_env(&bo, "string:lls-bad-mail");
        for (k, v) in mail_env(25, "start") {
            env = with(env, &[(k, v.as_str())]);
        }
        let env = with(env, &[(setting, value)]);
        let said = refused_start(&env, dir.path());
        assert!(said.contains(says), "{setting}={value}: {said}");
    }
}
