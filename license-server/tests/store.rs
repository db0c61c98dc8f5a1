//! End-to-end tests of the store with the real binary: a damaged journal stops the start
//! and changes nothing, `store verify` and `store recover` keep every readable lease,
//! rights edited (or signed by another key) in the journal or the snapshot stop the start
//! naming the record and are never served, and the data directory is for its owner only.

#[expect(
    dead_code,
    unused_imports,
    reason = "the helpers are shared with e2e.rs, which uses the rest"
)]
mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use license_server::domain::{Event, Rights, RightsCheck};
use license_server::store::{self, StoreOptions, codec, frame};
use shared::capability::CapabilityClaims;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_license-server"))
}

/// Every file's bytes in `dir`, by name.
fn files_of(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

fn journal_of(dir: &Path) -> PathBuf {
    let mut segs: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.starts_with("journal-") && n.ends_with(".log")
        })
        .collect();
    segs.sort();
    segs.pop().expect("a journal segment")
}

async fn lease_clients(server: &Server) -> Vec<String> {
    let mut out: Vec<String> = leases_of(server, "cad")
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["client_id"].as_str().unwrap().to_owned())
        .collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_bit_stops_the_start_and_store_recover_keeps_every_other_lease() {
    let bo = TestBackoffice::start(vec![right("cad", 100)]).await;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("lls");
    let env = with(
        base_env(&bo, "string:lls-store"),
        &[("LEASE_DURATION", "1h")],
    );
    let mut server = Server::start(&data, env.clone()).await;
    wait_for(Duration::from_secs(15), "rights", || async {
        feature(&server, "cad").await.map(|_| ())
    })
    .await;
    let clients: Vec<String> = (0..30).map(|i| format!("client-{i:02}")).collect();
    for c in &clients {
        assert_eq!(checkout(&server, "cad", c).await.0, 201);
    }
    server.kill9();

    // A bit flipped in the grant of the 15th client.
    let path = journal_of(&data);
    let mut bytes = std::fs::read(&path).unwrap();
    let mut reader = frame::Reader::new(&bytes);
    let mut target = None;
    while let Some(Ok(f)) = reader.next_frame() {
        if let Ok((_, Event::LeaseGranted { lease })) = codec::get_record(f.payload)
            && lease.client_id == "client-14"
        {
            target = Some((f.offset, f.record));
        }
    }
    let (offset, record) = target.expect("the grant is in the journal");
    bytes[offset as usize + frame::RECORD_HEADER + 12] ^= 0x20;
    std::fs::write(&path, &bytes).unwrap();
    let before = files_of(&data);

    // The start is refused at once, naming the file, the offset and the record.
    let started = Instant::now();
    let out = bin()
        .arg("serve")
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("DATA_DIR", &data)
        .env("LISTEN", "127.0.0.1:0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(started.elapsed() < Duration::from_secs(10));
    let err = String::from_utf8_lossy(&out.stderr);
    for part in [
        path.display().to_string(),
        format!("byte {offset}"),
        format!("record {record}"),
        "store recover".to_owned(),
    ] {
        assert!(err.contains(&part), "{part:?} not in {err}");
    }
    assert_eq!(files_of(&data), before, "a refused start changed the files");

    // verify: damaged, exit status 1, nothing changed.
    let out = bin()
        .args(["store", "verify", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        report.contains("DAMAGED") && report.contains("lost"),
        "{report}"
    );
    assert_eq!(files_of(&data), before, "verify changed the files");

    // recover: asked and answered no, nothing changes; with --yes, every other lease kept.
    let mut child = bin()
        .args(["store", "recover", "--data-dir"])
        .arg(&data)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"n\n").unwrap();
    assert!(!child.wait_with_output().unwrap().status.success());
    assert_eq!(files_of(&data), before);
    let out = bin()
        .args(["store", "recover", "--yes", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let aside: Vec<_> = files_of(&data)
        .into_iter()
        .filter(|(n, _)| n.contains(".damaged-"))
        .collect();
    assert_eq!(aside.len(), 1);
    assert_eq!(aside[0].1, bytes, "the damaged file is kept as it was");

    let server = Server::start(&data, env).await;
    let mut expected = clients.clone();
    expected.retain(|c| c != "client-14");
    assert_eq!(lease_clients(&server).await, expected);
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_directory_and_its_files_are_for_their_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let bo = TestBackoffice::start(vec![right("cad", 5)]).await;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("lls");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(data.join("admin.token"), "an operator's own secret\n").unwrap();
    std::fs::set_permissions(
        data.join("admin.token"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let server = Server::start(&data, base_env(&bo, "string:lls-modes")).await;
    wait_for(Duration::from_secs(15), "rights", || async {
        feature(&server, "cad").await.map(|_| ())
    })
    .await;
    assert_eq!(checkout(&server, "cad", "a").await.0, 201);
    assert_eq!(mode(&data), 0o700);
    for (name, _) in files_of(&data) {
        assert_eq!(mode(&data.join(&name)), 0o600, "{name}");
    }
    let log = server.log();
    assert!(
        log.contains("readable or writable by others than its owner; fixed"),
        "{log}"
    );
    // Another process cannot use the same directory while the server runs.
    let said = refused_start(&base_env(&bo, "string:lls-modes"), &data);
    assert!(
        said.contains("another process uses this data directory"),
        "{said}"
    );
}

/// `data` with the token of the last change of rights in its journal replaced by
/// `forged` (re-framed, so every checksum holds: only the signature can tell); returns
/// the bytes and the record's offset and number.
fn journal_with_rights(data: &[u8], forged: &str) -> (Vec<u8>, u64, u64) {
    let mut reader = frame::Reader::new(data);
    let mut found = None;
    while let Some(Ok(f)) = reader.next_frame() {
        if let Ok((seq, Event::RightsUpdated { at, .. })) = codec::get_record(f.payload) {
            found = Some((f.offset, f.record, f.payload.len(), seq, at));
        }
    }
    let (offset, record, len, seq, at) = found.expect("a change of rights in the journal");
    let mut payload = Vec::new();
    codec::put_record(
        &mut payload,
        seq,
        &Event::RightsUpdated {
            rights: Rights::unverified(forged),
            at,
        },
    );
    let mut out = data[..offset as usize].to_vec();
    frame::put_frame(&mut out, &payload);
    out.extend_from_slice(&data[offset as usize + frame::RECORD_HEADER + len..]);
    (out, offset, record)
}

/// `data` (a snapshot) with its rights replaced by `forged`, re-framed.
fn snapshot_with_rights(data: &[u8], forged: &str) -> Vec<u8> {
    let mut reader = frame::Reader::new(data);
    let head = reader.next_frame().unwrap().unwrap();
    let codec::Section::Head { mut state, .. } = codec::get_section(head.payload).unwrap() else {
        panic!("the first section is the head")
    };
    state.rights = Some(Rights::unverified(forged));
    let mut payload = Vec::new();
    codec::put_head(&mut payload, &state);
    let mut out = data[..head.offset as usize].to_vec();
    frame::put_frame(&mut out, &payload);
    out.extend_from_slice(
        &data[head.offset as usize + frame::RECORD_HEADER + head.payload.len()..],
    );
    out
}

/// `license-server store ARGS --data-dir DATA` with the server's settings in the
/// environment (the back office's key, the hostid).
fn store_cmd(env: &[(String, String)], data: &Path, args: &[&str]) -> std::process::Output {
    bin()
        .arg("store")
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rights_edited_at_rest_stop_the_start_naming_the_record_and_are_never_served() {
    const HOST: &str = "string:lls-forge";
    let bo = TestBackoffice::start(vec![right("cad", 3)]).await;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("lls");
    let env = base_env(&bo, HOST);
    let mut server = Server::start(&data, env.clone()).await;
    wait_for(Duration::from_secs(15), "rights", || async {
        feature(&server, "cad").await.filter(|f| f["count"] == 3)
    })
    .await;
    for c in ["a", "b"] {
        assert_eq!(checkout(&server, "cad", c).await.0, 201);
    }
    server.kill9();

    // The journal's rights: the answer's counts edited under its signature, and an answer
    // with 999,999 seats signed by another key.
    let path = journal_of(&data);
    let original = std::fs::read(&path).unwrap();
    let mut reader = frame::Reader::new(&original);
    let mut genuine = None;
    while let Some(Ok(f)) = reader.next_frame() {
        if let Ok((_, Event::RightsUpdated { rights, .. })) = codec::get_record(f.payload) {
            genuine = Some(rights.token().to_owned());
        }
    }
    let genuine = genuine.expect("the answer in the journal");
    let check = RightsCheck::new(bo.producer(), shared::HostId::parse(HOST).unwrap());
    let claims: CapabilityClaims = bo.producer().decode_capability(&genuine).unwrap();
    let mut inflated = claims.clone();
    inflated.rights[0].count = 999_999;
    for (what, forged, why) in [
        (
            "edited",
            edited_token(&genuine, |c| set_counts(c, 999_999)),
            "the signature does not verify",
        ),
        (
            "another key",
            bo.sign_wrong(&inflated),
            "not by the configured key",
        ),
    ] {
        let (bytes, offset, record) = journal_with_rights(&original, &forged);
        std::fs::write(&path, &bytes).unwrap();
        let before = files_of(&data);
        let err = refused_start(&env, &data);
        for part in [
            path.display().to_string(),
            format!("byte {offset}"),
            format!("record {record}"),
            "its rights do not verify".to_owned(),
            why.to_owned(),
        ] {
            assert!(err.contains(&part), "{what}: {part:?} not in {err}");
        }
        assert_eq!(
            files_of(&data),
            before,
            "{what}: a refused start changed the files"
        );
        let out = store_cmd(&env, &data, &["verify"]);
        let report = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{what}: {report}");
        assert!(report.contains("never served"), "{what}: {report}");
    }

    // Kept, the edited answer is dropped by recover; the leases stay, and the server
    // counts the signed seats, never more.
    let out = store_cmd(&env, &data, &["recover", "--yes"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut server = Server::start(&data, env.clone()).await;
    let f = wait_for(Duration::from_secs(15), "the signed rights", || async {
        let f = feature(&server, "cad").await?;
        assert!(f["count"].as_u64().unwrap() <= 3, "{f}");
        (f["count"] == 3).then_some(f)
    })
    .await;
    assert_eq!(f["in_use"], 2);
    assert_eq!(lease_clients(&server).await, ["a", "b"]);
    server.kill9();

    // The same in a snapshot (written by the store's own compaction).
    let opts = StoreOptions {
        rights: Some(check.clone()),
        ..StoreOptions::default()
    };
    let (state, st, _) = store::open(&data, opts).unwrap();
    assert_eq!(state.current_rights()[0].count, 3);
    st.compact(state.frozen());
    st.shutdown();
    let snap = data.join("snapshot.bin");
    let written = std::fs::read(&snap).unwrap();
    let forged = edited_token(state.rights.as_ref().unwrap().token(), |c| {
        set_counts(c, 999_999)
    });
    std::fs::write(&snap, snapshot_with_rights(&written, &forged)).unwrap();
    let err = refused_start(&env, &data);
    for part in [
        snap.display().to_string(),
        "record 0".to_owned(),
        "its rights do not verify".to_owned(),
    ] {
        assert!(err.contains(&part), "{part:?} not in {err}");
    }
    let out = store_cmd(&env, &data, &["recover", "--yes"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let server = Server::start(&data, env).await;
    wait_for(Duration::from_secs(15), "the signed rights", || async {
        let f = feature(&server, "cad").await?;
        assert!(f["count"].as_u64().unwrap() <= 3, "{f}");
        (f["count"] == 3).then_some(())
    })
    .await;
    assert_eq!(lease_clients(&server).await, ["a", "b"]);
}
