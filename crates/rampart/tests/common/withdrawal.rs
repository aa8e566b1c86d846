//! What the withdrawal tests share: the two first administrators signed in, staff members with one role, waiting
//! for the worker to move a withdrawal.

#![allow(dead_code)] // each test binary uses part of it

use std::future::Future;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::customer::Customer;
use super::production::Staff;
use super::{Api, Server};

/// The network fee held with each withdrawal (the server's default, 0.0002 BTC).
pub const FEE_HELD_SAT: u64 = 20_000;

/// How long the worker may take to move a withdrawal or the watcher to see a payment.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// Waits until `check` holds, at most [`DEADLINE`].
pub async fn wait_for<F, Fut>(what: &str, check: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + DEADLINE;
    while !check().await {
        assert!(Instant::now() < deadline, "{what} did not happen within {DEADLINE:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The customer's view of one of their withdrawals.
pub async fn view(c: &Customer, id: &str) -> Value {
    c.get(&format!("/v1/me/withdrawals/{id}")).await.expect(200).clone()
}

/// Waits until the withdrawal is in `state`; answers its view.
pub async fn wait_state(c: &Customer, id: &str, state: &str) -> Value {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let v = view(c, id).await;
        if v["state"] == json!(state) {
            return v;
        }
        assert!(Instant::now() < deadline, "withdrawal {id} is not {state} within {DEADLINE:?}: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The first administrators' enrolment code the development server printed for `name`.
pub fn admin_code(server: &Server, name: &str) -> String {
    let tail = server.log.tail();
    let prefix = format!("first administrator {name}: enrolment code ");
    tail.lines()
        .find_map(|l| l.trim().strip_prefix(&prefix).map(str::to_owned))
        .unwrap_or_else(|| panic!("the server printed no enrolment code for {name}:\n{tail}"))
}

/// The development server's two first administrators, enrolled and signed in: their clients.
pub async fn two_administrators(server: &Server) -> (Api, Api) {
    let ((_, admin), (_, admin2)) = two_administrators_with_factors(server).await;
    (admin, admin2)
}

/// [`two_administrators`], each with their second factor.
pub async fn two_administrators_with_factors(server: &Server) -> ((Staff, Api), (Staff, Api)) {
    let mut admin =
        Staff::enrol(server, "admin", &admin_code(server, "admin"), "first administrator!", &["administrator"]).await;
    let mut admin2 =
        Staff::enrol(server, "admin2", &admin_code(server, "admin2"), "second administrator", &["administrator"]).await;
    admin.sign_in(server, &["administrator"]).await;
    admin2.sign_in(server, &["administrator"]).await;
    let (api, api2) = (admin.api(server), admin2.api(server));
    ((admin, api), (admin2, api2))
}

/// A new staff member `name` with `role` (asked by one administrator, approved by the other), enrolled and signed in.
pub async fn staff_member(root_admin: &Api, admin2: &Api, server: &Server, name: &str, role: &str) -> (Staff, Api) {
    let (id, code) = root_admin.create_staff(name).await;
    admin2.approve(root_admin.request_role(id, role).await).await;
    let mut s = Staff::enrol(server, name, &code, &format!("{name}'s long passphrase"), &[role]).await;
    s.sign_in(server, &[role]).await;
    let api = s.api(server);
    (s, api)
}
