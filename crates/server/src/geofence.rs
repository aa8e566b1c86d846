//! Geofencing: the client's country from an IP-range database when no trusted proxy gives it, and the refusal of
//! sign-up and sign-in from the blocked jurisdictions (by default those under comprehensive sanctions).

use std::net::IpAddr;
use std::path::Path;

use axum::http::StatusCode;
use rampart_audit::Outcome;
use rampart_compliance::geo::{GeoIp, Geofence};
use rampart_risk::Country;

use crate::AppState;
use crate::customer_api::Client;
use crate::error::ApiError;

/// Where addresses are, and which countries are refused.
pub struct Geofencing {
    geo: Option<GeoIp>,
    fence: Geofence,
}

impl Geofencing {
    /// Refuses the countries `blocked` (two-letter codes); locates addresses with `geo` when given.
    pub fn new(geo: Option<GeoIp>, blocked: &[String]) -> Result<Geofencing, String> {
        Ok(Geofencing { geo, fence: Geofence::new(blocked.iter().map(String::as_str))? })
    }

    /// Reads the `geoip` and `geoip6` range files of `dir` (Debian's `tor-geoipdb` puts them in `/usr/share/tor`).
    pub fn read_ranges(dir: &Path) -> Result<GeoIp, String> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))
        };
        GeoIp::parse(&read("geoip")?, &read("geoip6")?).map_err(|e| format!("{}: {e}", dir.display()))
    }

    /// How many ranges locate addresses (IPv4, IPv6).
    pub fn ranges(&self) -> (usize, usize) {
        self.geo.as_ref().map_or((0, 0), GeoIp::len)
    }

    /// The country of `ip`, if the ranges know it.
    pub fn country(&self, ip: IpAddr) -> Option<Country> {
        let code = self.geo.as_ref()?.country(ip)?;
        Country::parse(std::str::from_utf8(&code).ok()?)
    }

    /// Whether `country` is refused.
    pub fn blocks(&self, country: Country) -> bool {
        let code = country.as_str().as_bytes();
        code.len() == 2 && self.fence.blocks([code[0], code[1]])
    }
}

/// Refuses `action` to a client in a blocked jurisdiction: `403 jurisdiction_blocked`, and an audit record of the
/// refusal with the address and the country.
pub(crate) async fn check(state: &AppState, client: &Client, action: &str) -> Result<(), ApiError> {
    let (Some(fencing), Some(country)) = (state.geofencing(), client.country) else { return Ok(()) };
    if !fencing.blocks(country) {
        return Ok(());
    }
    let mut record = state.record("anonymous", action, "jurisdiction", Outcome::Denied);
    record.details.insert("reason".into(), "jurisdiction_blocked".into());
    record.details.insert("ip".into(), client.ip.to_string());
    record.details.insert("country".into(), country.as_str().into());
    state.audit(vec![record]).await?;
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        "jurisdiction_blocked",
        format!("Rampart is not available in {country}: sign-up and sign-in from there are refused"),
    ))
}

/// An existing customer seen signing in from a blocked jurisdiction: a case flags the account for off-boarding (one
/// open case per customer; the account keeps working until compliance decides).
pub(crate) async fn flag_for_offboarding(state: &AppState, client: &Client, email: &str) -> Result<(), ApiError> {
    let (Ok(keyring), Some(country)) = (state.keyring(), client.country) else { return Ok(()) };
    let Ok(email) = crate::customer_api::normalise_email(email) else { return Ok(()) };
    let index = crate::customer_api::email_index(&keyring, &email);
    let Some(customer) = state.store().customer_by_email_index(&index).await? else { return Ok(()) };
    let details = serde_json::json!({"country": country.as_str(), "ip": client.ip.to_string(), "seen": "sign_in"});
    let mut record = state.record(
        "system",
        "compliance.offboarding.flagged",
        &format!("customer:{}", customer.id),
        Outcome::Success,
    );
    record.details.insert("country".into(), country.as_str().into());
    record.details.insert("ip".into(), client.ip.to_string());
    let new = rampart_store::NewCase {
        customer_id: customer.id,
        kind: "offboarding",
        outcome: "flag",
        details: &details.to_string(),
    };
    state.store().open_compliance_case(new, state.now_ns(), &state.auditor(&keyring), vec![record]).await?;
    Ok(())
}
