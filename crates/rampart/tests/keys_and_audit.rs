//! Key rotation and rewrap over HTTP, and `rampart audit verify|export` on a real database, including one that was
//! tampered with directly.

#[macro_use]
#[allow(dead_code)]
mod common;

use std::ffi::OsString;

use common::production::{Staff, rampart};
use common::{Db, Server};
use reqwest::Method;
use serde_json::{Value, json};

on_both_backends!(rotation_and_rewrap_keep_every_secret_readable);

async fn rotation_and_rewrap_keep_every_secret_readable(db: Db) {
    let server = Server::start(&db).await;
    let api = server.api();
    let created = server.post("/v1/staff", &json!({"username": "rotor"})).await;
    let code = created.str("enrolment_code").to_owned();
    let mut staff = Staff::enrol(&api, "rotor", &code, "a long enough password", &[]).await;

    let rotated = server.send(server.request(Method::POST, "/v1/sys/keys/rotate")).await;
    assert_eq!(rotated.expect(200)["version"], json!(2), "{}", rotated.text);
    // The TOTP secret is still under version 1 and still opens: signing in works.
    staff.sign_in(&api, &[]).await;

    let rewrapped = server.send(server.request(Method::POST, "/v1/sys/keys/rewrap")).await;
    assert_eq!(rewrapped.expect(200)["rewrapped"], json!(1), "{}", rewrapped.text);
    let again = server.send(server.request(Method::POST, "/v1/sys/keys/rewrap")).await;
    assert_eq!(again.expect(200)["rewrapped"], json!(0), "everything is already under version 2");
    // Under version 2 now, the secret still opens.
    staff.sign_in(&api, &[]).await;

    let entries = server.get("/v1/audit/entries?action=system.keys.rewrap").await;
    let details: Vec<Value> = entries.expect(200).as_array().unwrap().iter().map(|e| e["details"].clone()).collect();
    assert_eq!(details, [json!({"rewrapped": "1"}), json!({"rewrapped": "0"})]);
    assert_eq!(server.get("/v1/audit/verify").await.expect(200)["intact"], json!(true));
    // Without keys_manage, rotation is refused.
    let anonymous = server.api().with_token("rst_0000");
    let refused = anonymous.send_raw(anonymous.public(Method::POST, "/v1/sys/keys/rotate")).await;
    assert_eq!(refused.status.as_u16(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_verify_and_export_on_the_command_line_catch_tampering() {
    let db = Db::sqlite();
    let init = db.init().await;
    let key = init
        .stdout
        .lines()
        .find_map(|l| l.split_once("independently): ").map(|(_, k)| k.trim().to_owned()))
        .expect("init prints the audit public key");
    let verify = |extra: Vec<OsString>| {
        let mut args: Vec<OsString> = vec!["audit".into(), "verify".into()];
        args.extend(db.flags());
        args.extend(extra);
        args
    };
    let run = rampart(&verify(vec!["--public-key".into(), key.clone().into()]), &[]).await;
    assert!(run.success && run.stdout.contains("intact"), "{}\n{}", run.stdout, run.stderr);
    let run = rampart(&verify(vec![]), &[]).await;
    assert!(run.success && run.stderr.contains("trusting the audit public key stored"), "{}", run.stderr);

    let mut export: Vec<OsString> = vec!["audit".into(), "export".into(), "--action".into(), "staff.create".into()];
    export.extend(db.flags());
    let run = rampart(&export, &[]).await;
    let lines: Vec<Value> = run.stdout.lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect();
    assert_eq!(
        lines.iter().map(|e| e["target"].clone()).collect::<Vec<_>>(),
        [json!("staff:admin"), json!("staff:admin2")]
    );

    // Someone with the database file switches the triggers off and rewrites who created admin2.
    let url = format!("sqlite://{}", db.flags()[1].to_string_lossy()) + "/rampart.db";
    {
        use sqlx::Connection;
        let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
        sqlx::query("DROP TRIGGER audit_log_no_update").execute(&mut conn).await.unwrap();
        sqlx::query("UPDATE audit_log SET actor = 'staff:someone-else' WHERE seq = 3")
            .execute(&mut conn)
            .await
            .unwrap();
    }
    let run = rampart(&verify(vec!["--public-key".into(), key.into()]), &[]).await;
    assert!(!run.success, "a tampered log must fail verification");
    assert!(run.stdout.contains("TAMPERED: entry 3"), "{}", run.stdout);
    let wrong = "00".repeat(32);
    let run = rampart(&verify(vec!["--public-key".into(), wrong.into()]), &[]).await;
    assert!(!run.success, "a wrong key never verifies");
}
