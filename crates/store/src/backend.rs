//! Writing SQL once for both databases: the statements are the same, only the driver types differ. The macros
//! expand a body for each backend, with `$n` placeholders turned into SQLite's `?n`.

/// PostgreSQL's `$1` placeholders as SQLite's `?1`; only a `$` followed by a digit is a placeholder.
pub(crate) fn sqlite_placeholders(q: &str) -> String {
    let mut out = String::with_capacity(q.len());
    let mut chars = q.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('?');
        } else {
            out.push(c);
        }
    }
    out
}

/// Rows per multi-row `INSERT`: far below either backend's limit on bound parameters (SQLite 32,766, PostgreSQL
/// 65,535) for the widest row written this way.
pub(crate) const ROWS_PER_INSERT: usize = 500;

/// The `VALUES` list of a multi-row statement: `rows` tuples of `cols` numbered placeholders, `($1, $2), ($3, $4)`.
pub(crate) fn placeholders(rows: usize, cols: usize) -> String {
    let mut out = String::with_capacity(rows * cols * 5);
    for r in 0..rows {
        out.push_str(if r == 0 { "(" } else { ", (" });
        for c in 0..cols {
            if c > 0 {
                out.push_str(", ");
            }
            out.push('$');
            out.push_str(&(r * cols + c + 1).to_string());
        }
        out.push(')');
    }
    out
}

/// `count` numbered placeholders from `$first`, for an `IN` list: `$3, $4, $5`.
pub(crate) fn numbered(first: usize, count: usize) -> String {
    (first..first + count).map(|k| format!("${k}")).collect::<Vec<_>>().join(", ")
}

/// Runs `$body` in a write transaction of either backend, with `$tx` the backend's transaction wrapper and `$sql`
/// a function turning `$n` placeholders into the backend's.
macro_rules! on_backend {
    ($store:expr, |$tx:ident, $sql:ident| $body:block) => {
        match $store {
            $crate::Store::Sqlite(s) => {
                let mut $tx = s.begin().await?;
                let $sql = |q: &str| -> std::borrow::Cow<'static, str> {
                    std::borrow::Cow::Owned($crate::backend::sqlite_placeholders(q))
                };
                let out = $body;
                $tx.0.commit().await?;
                out
            }
            $crate::Store::Postgres(s) => {
                let mut $tx = crate::postgres::PgTx(s.pool.begin().await?);
                let $sql = |q: &str| -> std::borrow::Cow<'static, str> {
                    std::borrow::Cow::Owned($crate::backend::postgres_placeholders(q))
                };
                let out = $body;
                $tx.0.commit().await?;
                out
            }
        }
    };
}

/// Runs a read-only `$body` on either backend's read pool, as `$pool`.
macro_rules! on_reader {
    ($store:expr, |$pool:ident, $sql:ident| $body:block) => {
        match $store {
            $crate::Store::Sqlite(s) => {
                let $pool = &s.reader;
                let $sql = |q: &str| -> std::borrow::Cow<'static, str> {
                    std::borrow::Cow::Owned($crate::backend::sqlite_placeholders(q))
                };
                $body
            }
            $crate::Store::Postgres(s) => {
                let $pool = &s.pool;
                let $sql = |q: &str| -> std::borrow::Cow<'static, str> {
                    std::borrow::Cow::Owned($crate::backend::postgres_placeholders(q))
                };
                $body
            }
        }
    };
}

/// `value.pipe(f)` is `f(value)`: lets a macro's block value flow into `Ok` without a temporary.
pub(crate) trait Pipe: Sized {
    fn pipe<R>(self, f: impl FnOnce(Self) -> R) -> R {
        f(self)
    }
}

impl<T> Pipe for T {}

/// PostgreSQL's placeholders, unchanged (the counterpart of [`sqlite_placeholders`]).
pub(crate) fn postgres_placeholders(q: &str) -> String {
    q.to_owned()
}

/// The `AuditTx` methods whose SQL is the same on both databases, expanded inside each backend's impl with `$sql`
/// turning the `$n` placeholders into that backend's.
macro_rules! shared_audit_tx_methods {
    ($sql:path) => {
        async fn last_checkpoint_seq(&mut self) -> Result<u64, StoreError> {
            let last: Option<i64> =
                sqlx::query_scalar("SELECT max(seq) FROM audit_checkpoints").fetch_one(&mut *self.0).await?;
            Ok(last.map_or(0, |v| u64::try_from(v).unwrap_or(0)))
        }

        async fn insert_checkpoint(&mut self, cp: &rampart_audit::Checkpoint) -> Result<(), StoreError> {
            sqlx::query(&$sql("INSERT INTO audit_checkpoints (seq, hash, time_ns, signature) VALUES ($1, $2, $3, $4)"))
                .bind(i64::try_from(cp.seq).expect("audit sequence fits i64"))
                .bind(cp.hash.to_vec())
                .bind(ts(cp.time_ns))
                .bind(cp.signature.to_vec())
                .execute(&mut *self.0)
                .await?;
            Ok(())
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_number_rows_then_columns() {
        assert_eq!(placeholders(2, 3), "($1, $2, $3), ($4, $5, $6)");
        assert_eq!(placeholders(1, 1), "($1)");
        assert_eq!(numbered(3, 3), "$3, $4, $5");
        assert_eq!(sqlite_placeholders(&placeholders(1, 2)), "(?1, ?2)");
    }
}
