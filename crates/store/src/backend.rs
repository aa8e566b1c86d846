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
                let $sql = |q: &str| -> std::borrow::Cow<'static, str> { std::borrow::Cow::Owned(q.to_owned()) };
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
                let $sql = |q: &str| -> std::borrow::Cow<'static, str> { std::borrow::Cow::Owned(q.to_owned()) };
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
