//! Geofencing over HTTP: the client's country from Debian's `tor-geoipdb` ranges (`.ci/run` installs them), sign-up
//! and sign-in refused from a blocked jurisdiction with a clear error, allowed from elsewhere.

#[macro_use]
#[allow(dead_code)]
mod common;

use common::{Db, Server, address_in};
use reqwest::Method;
use serde_json::json;

const CONFIG: &str = r#"
[identity]
client_ip_header = "x-forwarded-for"

[compliance]
geoip_dir = "/usr/share/tor"
blocked_countries = ["IR", "KP", "CU", "SY"]
"#;

async fn sign_up_and_sign_in_are_refused_from_blocked_jurisdictions(db: Db) {
    let server = Server::start_with_config(&db, CONFIG).await;
    let api = server.api();
    let post = |ip: String, path: &'static str, body: serde_json::Value| {
        let api = api.clone();
        async move { api.send(api.public(Method::POST, path).header("x-forwarded-for", ip).json(&body)).await }
    };
    let password = "Quartz-Meadow-Lantern-58-Pebbles";
    let body = |email: &str| json!({"email": email, "password": password});

    for country in ["IR", "KP", "SY", "CU"] {
        let answer = post(address_in(country), "/v1/customers/sign-up", body("far@example.com")).await;
        answer.assert_error(403, "jurisdiction_blocked");
        assert!(answer.text.contains(country), "the message names the country: {}", answer.text);
    }
    // From Germany the same sign-up goes through; from Iran its owner cannot sign in.
    post(address_in("DE"), "/v1/customers/sign-up", body("far@example.com")).await.expect(201);
    post(address_in("IR"), "/v1/customers/sign-in", body("far@example.com"))
        .await
        .assert_error(403, "jurisdiction_blocked");
    let answer = post(address_in("DE"), "/v1/customers/sign-in", body("far@example.com")).await;
    assert_ne!(answer.error_code(), "jurisdiction_blocked", "{}", answer.text);
}

on_both_backends!(sign_up_and_sign_in_are_refused_from_blocked_jurisdictions);
