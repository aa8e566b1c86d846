//! What the store's test files share: a test run on both backends (SQLite in a temporary directory; PostgreSQL in
//! a database of its own when `RAMPART_TEST_POSTGRES_URL` is set, skipped otherwise), the store opened and migrated,
//! a keyring and an auditor.
#![allow(dead_code)]

use std::sync::Arc;

use rampart_crypto::{Keyring, initialise};
use rampart_store::{Auditor, ConnectOptions, Store};

/// `both_backends!(prefix, name, |store: Arc<Store>| async move { … })`: a module `name` with a test on each
/// backend; `prefix` keeps the PostgreSQL databases of different files apart.
macro_rules! both_backends {
    ($prefix:literal, $name:ident, $body:expr) => {
        mod $name {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let dir = tempfile::tempdir().unwrap();
                let url = rampart_store::testing::sqlite_url(dir.path());
                ($body)(common::open(&url).await).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let Some(url) =
                    rampart_store::testing::fresh_postgres_url(concat!($prefix, stringify!($name), "::postgres")).await
                else {
                    return;
                };
                ($body)(common::open(&url).await).await;
            }
        }
    };
}

/// The store at `url`, migrated.
pub async fn open(url: &str) -> Arc<Store> {
    let store = Store::connect(url, &ConnectOptions::default()).await.unwrap();
    store.migrate().await.unwrap();
    Arc::new(store)
}

/// One keyring for the whole test binary.
pub fn keyring() -> &'static Keyring {
    static KEYRING: std::sync::OnceLock<Keyring> = std::sync::OnceLock::new();
    KEYRING.get_or_init(|| {
        let (config, root, _) = initialise(5, 3, &mut rand_core::OsRng).unwrap();
        Keyring::create(root, config.init_id).0
    })
}

/// An auditor signing with [`keyring`].
pub fn auditor() -> Auditor<'static> {
    Auditor { signer: keyring(), checkpoint_every: 1000 }
}
