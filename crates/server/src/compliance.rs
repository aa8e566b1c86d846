//! Compliance in the service: the sanctions list in force (imported, versioned, diffed), customers screened at
//! sign-up and at KYC submission and every customer re-screened when a list changes (a match freezes the account and
//! opens a case), destinations and sources screened against sanctioned addresses and the exchange's own block and
//! risk lists, KYC levels and their limits, Travel Rule records and the three-level review of large transfers.

use std::sync::{Arc, RwLock};

use rampart_audit::Outcome;
use rampart_compliance::kyc::{DocumentKind, Identity, LevelLimits};
use rampart_compliance::ofac::{self, Entry};
use rampart_compliance::{AddressBook, Category, Listing, Match, Query, Screener, review, travel};
use rampart_crypto::Keyring;
use rampart_store::{NewCase, TravelRuleRecord};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::AppState;
use crate::error::ApiError;
use crate::identity::customer_aad;

/// The list source the OFAC SDN import writes.
pub const OFAC_SDN: &str = "ofac-sdn";

/// The files of an SDN import, by name: the three CSV files the list needs and its optional comments.
pub const SDN_FILES: [&str; 4] = ["sdn.csv", "alt.csv", "add.csv", "sdn_comments.csv"];

/// How compliance behaves.
#[derive(Clone, Debug)]
pub struct ComplianceConfig {
    /// Name-screening score (parts per million) at or above which a customer is a match.
    pub name_threshold: u32,
    /// Withdrawal limits per KYC level.
    pub kyc_limits: LevelLimits,
    /// Transfers of at least this many USD micro-dollars carry Travel Rule data.
    pub travel_rule_usd: u64,
    /// Transfers above this many USD micro-dollars pass the three-level review.
    pub review_usd: u64,
}

impl Default for ComplianceConfig {
    fn default() -> ComplianceConfig {
        ComplianceConfig {
            name_threshold: rampart_compliance::DEFAULT_THRESHOLD,
            kyc_limits: LevelLimits::default(),
            travel_rule_usd: travel::DEFAULT_THRESHOLD,
            review_usd: review::DEFAULT_THRESHOLD,
        }
    }
}

/// The lists in force: the SDN list's version and entries, its name index, and every listed address (the SDN
/// remarks, the per-asset files imported with it, and the exchange's own lists).
pub struct Lists {
    /// The SDN list's version (none imported yet: `None`).
    pub version: Option<i64>,
    entries: Arc<Vec<Entry>>,
    screener: Arc<Screener>,
    asset_files: Arc<Vec<(String, String)>>,
    /// Addresses the per-asset lists hold.
    asset_addresses: usize,
    book: AddressBook,
}

impl Lists {
    /// The lists of `entries` and `asset_files` (per-asset address lists, by asset) with the exchange's `own`
    /// listings: the name index is built here, once per version.
    fn build(
        version: Option<i64>,
        entries: Vec<Entry>,
        asset_files: Vec<(String, String)>,
        own: &[rampart_store::AddressListing],
    ) -> Lists {
        let screener = Arc::new(Screener::new(&entries));
        let mut lists = Lists {
            version,
            entries: Arc::new(entries),
            screener,
            asset_files: Arc::new(asset_files),
            asset_addresses: 0,
            book: AddressBook::default(),
        };
        (lists.book, lists.asset_addresses) = lists.address_book(own);
        lists
    }

    /// The same lists with the exchange's listings `own` instead: the name index is shared, not rebuilt.
    fn with_own(&self, own: &[rampart_store::AddressListing]) -> Lists {
        Lists {
            version: self.version,
            entries: Arc::clone(&self.entries),
            screener: Arc::clone(&self.screener),
            asset_files: Arc::clone(&self.asset_files),
            asset_addresses: self.asset_addresses,
            book: self.address_book(own).0,
        }
    }

    /// Every listed address: the SDN remarks, the per-asset lists and `own`; with how many the per-asset lists gave.
    fn address_book(&self, own: &[rampart_store::AddressListing]) -> (AddressBook, usize) {
        let mut book = AddressBook::default();
        rampart_compliance::sdn_addresses(&self.entries, &mut book);
        let from_files =
            self.asset_files.iter().map(|(asset, text)| book.add_list(asset, "ofac-asset-list", text)).sum();
        for l in own {
            let category = if l.category == "blocked" { Category::Blocked } else { Category::Risk };
            book.add(
                &l.address,
                Listing {
                    asset: l.asset.clone().unwrap_or_default(),
                    source: "exchange".into(),
                    category,
                    reason: l.reason.clone(),
                },
            );
        }
        (book, from_files)
    }

    /// Entries in the list.
    pub fn entries(&self) -> usize {
        self.entries.len()
    }

    /// The best matches of `query`.
    pub fn screen(&self, query: &Query<'_>, limit: usize) -> Vec<Match> {
        self.screener.screen(query, limit)
    }

    /// Everything listed about `address`.
    pub fn address(&self, address: &str) -> &[Listing] {
        self.book.lookup(address)
    }

    /// The entry numbered `id`.
    pub fn entry(&self, id: u32) -> Option<&Entry> {
        self.entries.binary_search_by_key(&id, |e| e.id).ok().map(|i| &self.entries[i])
    }
}

/// Reads an import's files (by name: the SDN CSV files, `addresses/<ASSET>` lists): the parsed list and the
/// per-asset address lists.
fn read_files(files: &[(String, Vec<u8>)]) -> (ofac::Parsed, Vec<(String, String)>) {
    let file = |name: &str| files.iter().find(|(n, _)| n == name).map_or(&[][..], |(_, b)| b.as_slice());
    let parsed = ofac::parse(&ofac::Files {
        sdn: file("sdn.csv"),
        alt: file("alt.csv"),
        add: file("add.csv"),
        comments: file("sdn_comments.csv"),
    });
    let asset_files = files
        .iter()
        .filter_map(|(n, b)| Some((n.strip_prefix("addresses/")?.to_owned(), String::from_utf8_lossy(b).into_owned())))
        .collect();
    (parsed, asset_files)
}

/// Compliance's state in the service.
pub struct Compliance {
    config: ComplianceConfig,
    lists: RwLock<Arc<Lists>>,
    provider: Box<dyn KycProvider>,
}

impl Compliance {
    /// Compliance with `config`, no list yet, KYC reviewed by the exchange's own staff.
    pub fn new(config: ComplianceConfig) -> Compliance {
        let lists = Lists::build(None, Vec::new(), Vec::new(), &[]);
        Compliance { config, lists: RwLock::new(Arc::new(lists)), provider: Box::new(ManualReview) }
    }

    /// The same with another KYC provider.
    pub fn with_provider(mut self, provider: Box<dyn KycProvider>) -> Compliance {
        self.provider = provider;
        self
    }

    /// The configuration.
    pub fn config(&self) -> &ComplianceConfig {
        &self.config
    }

    /// The lists in force.
    pub fn lists(&self) -> Arc<Lists> {
        Arc::clone(&self.lists.read().expect("the lists lock is never poisoned"))
    }

    fn install(&self, lists: Lists) {
        *self.lists.write().expect("the lists lock is never poisoned") = Arc::new(lists);
    }

    /// The KYC provider.
    pub fn provider(&self) -> &dyn KycProvider {
        self.provider.as_ref()
    }

    /// Loads the newest imported list and the exchange's own address lists from the store.
    pub async fn load(&self, store: &rampart_store::Store) -> Result<(), String> {
        let own = store.address_listings().await.map_err(|e| e.to_string())?;
        let Some((version, files)) = store.latest_sanctions_list(OFAC_SDN).await.map_err(|e| e.to_string())? else {
            self.install(Lists::build(None, Vec::new(), Vec::new(), &own));
            return Ok(());
        };
        let lists = tokio::task::spawn_blocking(move || {
            let (parsed, asset_files) = read_files(&files);
            Lists::build(Some(version.version), parsed.entries, asset_files, &own)
        })
        .await
        .map_err(|e| e.to_string())?;
        tracing::info!(version = ?lists.version, entries = lists.entries.len(), addresses = lists.book.len(), "sanctions lists loaded");
        self.install(lists);
        Ok(())
    }

    /// Rebuilds the address book after the exchange's own lists changed.
    pub async fn reload_own_lists(&self, store: &rampart_store::Store) -> Result<(), ApiError> {
        let own = store.address_listings().await?;
        let lists = self.lists().with_own(&own);
        self.install(lists);
        Ok(())
    }

    /// What screening `address` for a withdrawal or deposit decides.
    pub fn screen_address(&self, address: &str) -> AddressVerdict {
        let lists = self.lists();
        // Every listing of the address counts, whatever asset it was listed for: a token on Ethereum shares the
        // addresses of ether, and a holder who is sanctioned is sanctioned for every asset.
        let worst = lists.address(address).iter().max_by_key(|l| l.category).cloned();
        match worst {
            None => AddressVerdict::Clear,
            Some(l) if l.category == Category::Risk => AddressVerdict::Review(l),
            Some(l) => AddressVerdict::Refuse(l),
        }
    }
}

/// What screening an address decides.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AddressVerdict {
    /// On no list.
    Clear,
    /// On the risk list: allowed after a person's review.
    Review(Listing),
    /// Sanctioned or blocked: a withdrawal is refused, a deposit held.
    Refuse(Listing),
}

/// A KYC vendor: told of each stored submission, it answers at once or later (a person, or the vendor's callback,
/// decides through the review API).
pub trait KycProvider: Send + Sync {
    /// Its name, stored with each submission.
    fn name(&self) -> &'static str;
    /// Assesses a submission.
    fn assess(&self, identity: &Identity, documents: &[DocumentKind]) -> Verdict;
}

/// A provider's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A person decides later.
    Pending,
    /// Approved.
    Approve,
    /// Rejected, with the reason.
    Reject(String),
}

/// The exchange's own compliance reviewers: every submission waits in their queue.
pub struct ManualReview;

impl KycProvider for ManualReview {
    fn name(&self) -> &'static str {
        "manual"
    }

    fn assess(&self, _identity: &Identity, _documents: &[DocumentKind]) -> Verdict {
        Verdict::Pending
    }
}

/// What a customer is screened as.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ScreeningData {
    /// The full name.
    pub name: String,
    /// ISO code of nationality or residence.
    #[serde(default)]
    pub country: Option<String>,
    /// `YYYY-MM-DD`.
    #[serde(default)]
    pub date_of_birth: Option<String>,
}

impl ScreeningData {
    fn query(&self) -> Query<'_> {
        Query {
            name: &self.name,
            country: self.country.as_deref(),
            birth_year: self.date_of_birth.as_deref().and_then(|d| d.get(..4)).and_then(|y| y.parse().ok()),
        }
    }
}

fn best_match(lists: &Lists, data: &ScreeningData) -> Option<Match> {
    lists.screen(&data.query(), 1).into_iter().next()
}

/// Opens a frozen sanctions case for a match (unless one is open for the customer); answers the case, if opened.
async fn open_match_case(
    state: &AppState,
    keyring: &Keyring,
    customer_id: i64,
    version: i64,
    m: &Match,
    trigger: &str,
) -> Result<Option<i64>, ApiError> {
    let details = serde_json::json!({
        "list": OFAC_SDN, "list_version": version, "entry": m.entry, "primary_name": m.primary,
        "matched_name": m.matched, "score": m.score, "threshold": state.compliance().config.name_threshold,
        "trigger": trigger,
    })
    .to_string();
    let mut record =
        state.record("system", "compliance.sanctions.match", &format!("customer:{customer_id}"), Outcome::Success);
    record.details.insert("entry".into(), m.entry.to_string());
    record.details.insert("score".into(), m.score.to_string());
    record.details.insert("list_version".into(), version.to_string());
    record.details.insert("trigger".into(), trigger.into());
    let new = NewCase { customer_id, kind: "sanctions_match", outcome: "freeze", details: &details };
    Ok(state.store().open_compliance_case(new, state.now_ns(), &state.auditor(keyring), vec![record]).await?)
}

/// Stores what a customer is screened as and screens them against the list in force; a match freezes the account
/// and opens a case. Answers whether it matched.
pub async fn screen_customer(
    state: &AppState,
    customer_id: i64,
    handle: &[u8; 16],
    data: &ScreeningData,
    trigger: &str,
) -> Result<bool, ApiError> {
    let keyring = state.keyring()?;
    let lists = state.compliance().lists();
    let threshold = state.compliance().config.name_threshold;
    let found = {
        let (lists, data) = (Arc::clone(&lists), data.clone());
        tokio::task::spawn_blocking(move || best_match(&lists, &data))
            .await
            .map_err(|e| ApiError::internal(format!("screening failed: {e}")))?
    };
    let plain = serde_json::to_vec(data).expect("screening data serialises");
    let sealed = keyring.encrypt(&plain, customer_aad(handle, "screening").as_bytes());
    let result = lists.version.zip(found.as_ref()).map(|(v, m)| (v, m.score, m.entry));
    state.store().save_customer_screening(customer_id, &sealed, result, state.now_ns()).await?;
    match (lists.version, found) {
        (Some(version), Some(m)) if m.score >= threshold => {
            open_match_case(state, &keyring, customer_id, version, &m, trigger).await?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// What re-screening every customer found.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RescreenReport {
    /// Customers screened.
    pub screened: u64,
    /// Customers at or above the threshold.
    pub matches: u64,
    /// Cases opened (a customer with an open sanctions case gets no second one).
    pub cases_opened: u64,
    /// Screening records that could not be read (logged; never silently skipped).
    pub unreadable: u64,
    /// How long it took.
    pub elapsed_ms: u64,
}

/// Screens every customer against the list of `version`, in pages; matches freeze their accounts and open cases.
/// Records the report on the version.
pub async fn rescreen_all(state: &AppState, version: i64) -> Result<RescreenReport, ApiError> {
    const PAGE: u32 = 2000;
    let started = std::time::Instant::now();
    let keyring = state.keyring()?;
    let lists = state.compliance().lists();
    let threshold = state.compliance().config.name_threshold;
    let mut report = RescreenReport::default();
    let mut after = 0;
    loop {
        let page = state.store().screening_page(after, PAGE).await?;
        let Some(last) = page.last() else { break };
        after = last.customer_id;
        let mut people = Vec::with_capacity(page.len());
        for r in &page {
            let Ok(handle) = <[u8; 16]>::try_from(r.handle.as_slice()) else { continue };
            let data = keyring
                .decrypt(&r.data, customer_aad(&handle, "screening").as_bytes())
                .ok()
                .and_then(|p| serde_json::from_slice::<ScreeningData>(&p).ok());
            match data {
                Some(d) => people.push((r.customer_id, d)),
                None => {
                    tracing::error!(customer = r.customer_id, "a customer's screening data does not decrypt");
                    report.unreadable += 1;
                }
            }
        }
        let lists2 = Arc::clone(&lists);
        let results: Vec<(i64, Option<Match>)> = tokio::task::spawn_blocking(move || {
            people.into_iter().map(|(id, d)| (id, best_match(&lists2, &d))).collect()
        })
        .await
        .map_err(|e| ApiError::internal(format!("screening failed: {e}")))?;
        report.screened += results.len() as u64;
        let scores: Vec<(i64, u32, u32)> = results
            .iter()
            .map(|(id, m)| (*id, m.as_ref().map_or(0, |m| m.score), m.as_ref().map_or(0, |m| m.entry)))
            .collect();
        state.store().record_screenings(version, &scores, state.now_ns()).await?;
        for (id, m) in results {
            if let Some(m) = m.filter(|m| m.score >= threshold) {
                report.matches += 1;
                if open_match_case(state, &keyring, id, version, &m, "list_change").await?.is_some() {
                    report.cases_opened += 1;
                }
            }
        }
    }
    report.elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let text = serde_json::to_string(&report).expect("a report serialises");
    state.store().finish_rescreen(version, &text, state.now_ns()).await?;
    tracing::info!(version, screened = report.screened, matches = report.matches, "customers re-screened");
    Ok(report)
}

/// What an import found.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ImportReport {
    /// Entries.
    pub entries: usize,
    /// Aliases.
    pub aliases: usize,
    /// Postal addresses.
    pub addresses: usize,
    /// Digital-currency addresses in the remarks.
    pub crypto_addresses: usize,
    /// Addresses of the per-asset lists.
    pub asset_list_addresses: usize,
    /// Entry numbers new in this version.
    pub added: Vec<u32>,
    /// Entry numbers gone from it.
    pub removed: Vec<u32>,
    /// Entry numbers whose content changed.
    pub changed: Vec<u32>,
    /// Rows that could not be read, with file and line.
    pub problems: Vec<ProblemView>,
}

/// A row that could not be read.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProblemView {
    /// The file.
    pub file: String,
    /// The line, from 1.
    pub line: u64,
    /// What is wrong.
    pub message: String,
}

/// Parses an import, compares it with the list in force and installs it as `version` once stored. Answers the
/// report, the digest and the new lists (not yet installed).
pub(crate) fn prepare_import(
    files: &[(String, Vec<u8>)],
    current: &Lists,
    own: &[rampart_store::AddressListing],
) -> (ImportReport, Vec<u8>, Lists) {
    let (parsed, asset_files) = read_files(files);
    let mut digest = Sha256::new();
    for (name, body) in files {
        digest.update((name.len() as u64).to_be_bytes());
        digest.update(name.as_bytes());
        digest.update((body.len() as u64).to_be_bytes());
        digest.update(body);
    }
    let diff = rampart_compliance::diff(&current.entries, &parsed.entries);
    let problems = parsed
        .problems
        .iter()
        .map(|p| ProblemView { file: p.file.clone(), line: p.line, message: p.message.clone() })
        .collect();
    let lists = Lists::build(None, parsed.entries, asset_files, own);
    let entries = &lists.entries;
    let report = ImportReport {
        entries: entries.len(),
        aliases: entries.iter().map(|e| e.aliases.len()).sum(),
        addresses: entries.iter().map(|e| e.addresses.len()).sum(),
        crypto_addresses: entries.iter().map(|e| e.crypto.len()).sum(),
        asset_list_addresses: lists.asset_addresses,
        added: diff.added,
        removed: diff.removed,
        changed: diff.changed,
        problems,
    };
    (report, digest.finalize().to_vec(), lists)
}

/// Installs imported lists as `version`.
pub(crate) fn install_import(state: &AppState, mut lists: Lists, version: i64) {
    lists.version = Some(version);
    state.compliance().install(lists);
}

/// A transfer as compliance sees it.
#[derive(Clone, Copy, Debug)]
pub struct Transfer<'a> {
    /// Whose.
    pub customer_id: i64,
    /// Its reference (a withdrawal's id).
    pub reference: &'a str,
    /// The asset.
    pub asset: &'a str,
    /// The amount in the asset's units, as text.
    pub amount: &'a str,
    /// Its value in USD micro-dollars.
    pub amount_usd: u64,
}

/// Records a transfer's Travel Rule data, sealed (AAD `travel_rule:<reference>`); `false` when the reference has
/// a record already.
pub async fn record_travel_rule(
    state: &AppState,
    actor: &str,
    transfer: Transfer<'_>,
    data: &travel::TravelRule,
) -> Result<bool, ApiError> {
    let Transfer { customer_id, reference, asset, amount, amount_usd } = transfer;
    data.validate().map_err(|e| ApiError::bad_request(e.code, e.message))?;
    let keyring = state.keyring()?;
    let plain = serde_json::to_vec(data).expect("travel rule data serialises");
    let record = TravelRuleRecord {
        reference: reference.to_owned(),
        customer_id,
        asset: asset.to_owned(),
        amount: amount.to_owned(),
        amount_usd,
        data: keyring.encrypt(&plain, format!("travel_rule:{reference}").as_bytes()),
        created_at_ns: state.now_ns(),
    };
    let mut audit =
        state.record(actor, "compliance.travel_rule.recorded", &format!("transfer:{reference}"), Outcome::Success);
    audit.details.insert("customer".into(), customer_id.to_string());
    audit.details.insert("amount_usd_micros".into(), amount_usd.to_string());
    Ok(state.store().record_travel_rule(&record, &state.auditor(&keyring), vec![audit]).await?)
}

/// Opens the three-level review of a transfer when its value is above the threshold; answers the review's id, or
/// `None` when none is needed or one exists for the reference.
pub async fn open_transfer_review(
    state: &AppState,
    requested_by: &str,
    transfer: Transfer<'_>,
) -> Result<Option<i64>, ApiError> {
    let Transfer { customer_id, reference, asset, amount, amount_usd } = transfer;
    if !review::needed(amount_usd, state.compliance().config.review_usd) {
        return Ok(None);
    }
    let keyring = state.keyring()?;
    let mut record =
        state.record(requested_by, "compliance.review.opened", &format!("transfer:{reference}"), Outcome::Success);
    record.details.insert("amount_usd_micros".into(), amount_usd.to_string());
    Ok(state
        .store()
        .open_transfer_review(
            reference,
            customer_id,
            requested_by,
            asset,
            amount,
            amount_usd,
            state.now_ns(),
            &state.auditor(&keyring),
            vec![record],
        )
        .await?)
}
