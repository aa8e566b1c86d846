//! A development sink that delivers into a Maildir, which any mail reader can open.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::io::AsyncWriteExt;

use crate::mail::{MailError, MailFuture, Mailer, build_message};
use crate::render::EmailMessage;

/// A [`Mailer`] that writes each message as an RFC 5322 file into `dir/new/`, following the Maildir convention: the
/// file is written and synced under `dir/tmp/` and then renamed into `dir/new/`, so that a reader never sees half a
/// message. Nothing leaves the machine.
#[derive(Debug, Clone)]
pub struct MaildirMailer {
    dir: PathBuf,
}

impl MaildirMailer {
    /// Opens the Maildir at `dir`, creating it and its `tmp`, `cur` and `new` folders if needed.
    pub fn create(dir: impl Into<PathBuf>) -> Result<MaildirMailer, MailError> {
        let dir = dir.into();
        for sub in ["tmp", "cur", "new"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        Ok(MaildirMailer { dir })
    }

    /// The Maildir's root.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// A name unique to this delivery: the time, then a random part where the convention puts the delivery's
/// identifiers, then a host part. Randomness stands in for the process id and counter of the classic recipe, since
/// several tasks of one process deliver at once.
fn unique_name() -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    format!("{}.M{}R{}.rampart", now.as_secs(), now.subsec_micros(), uuid::Uuid::new_v4().simple())
}

impl Mailer for MaildirMailer {
    fn send<'a>(&'a self, from: &'a str, msg: &'a EmailMessage) -> MailFuture<'a> {
        Box::pin(async move {
            let bytes = build_message(from, msg)?.formatted();
            let name = unique_name();
            let tmp = self.dir.join("tmp").join(&name);
            let mut file = tokio::fs::OpenOptions::new().write(true).create_new(true).open(&tmp).await?;
            let written = async {
                file.write_all(&bytes).await?;
                file.sync_all().await
            }
            .await;
            drop(file);
            if let Err(err) = written {
                // Best effort: a leftover file in tmp/ is harmless, and readers clean tmp/ anyway.
                let _ = tokio::fs::remove_file(&tmp).await;
                return Err(err.into());
            }
            tokio::fs::rename(&tmp, self.dir.join("new").join(&name)).await?;
            Ok(())
        })
    }
}
