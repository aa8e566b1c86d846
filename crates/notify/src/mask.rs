//! Masking of contact details and addresses, for notifications and logs that must show enough to recognise a value
//! without disclosing it.

/// Keeps the first `head` and last `tail` characters of `s` and replaces the rest with `fill`; a value too short to
/// keep both ends and hide something is hidden whole.
fn keep_ends(s: &str, head: usize, tail: usize, fill: &str) -> String {
    let chars: Vec<char> = s.chars().collect();
    if chars.len() <= head + tail {
        return fill.to_owned();
    }
    let mut out: String = chars[..head].iter().collect();
    out.push_str(fill);
    out.extend(&chars[chars.len() - tail..]);
    out
}

/// Masks an email address for display: the first character of the mailbox and the whole domain
/// (`alice@example.com` → `a***@example.com`).
pub fn mask_email(email: &str) -> String {
    match email.rsplit_once('@') {
        Some((local, domain)) => match local.chars().next() {
            Some(first) => format!("{first}***@{domain}"),
            None => format!("***@{domain}"),
        },
        None => keep_ends(email, 1, 0, "***"),
    }
}

/// Masks a phone number for logs: the first three and the last two characters (`+447700900123` → `+44********23`).
pub fn mask_phone(phone: &str) -> String {
    let len = phone.chars().count();
    let hidden = len.saturating_sub(5).max(1);
    keep_ends(phone, 3, 2, &"*".repeat(hidden))
}

/// Masks a blockchain address for display: its first six and last four characters
/// (`bc1qxy2kgdygjrsqtzq2n0yrf2493p83kkfjhx0wlh` → `bc1qxy…0wlh`), enough to compare with the address one meant.
pub fn mask_address(address: &str) -> String {
    keep_ends(address, 6, 4, "…")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails() {
        assert_eq!(mask_email("alice@example.com"), "a***@example.com");
        assert_eq!(mask_email("@example.com"), "***@example.com");
        assert_eq!(mask_email("nobody"), "n***");
        assert_eq!(mask_email(""), "***");
    }

    #[test]
    fn phones() {
        assert_eq!(mask_phone("+447700900123"), "+44********23");
        assert_eq!(mask_phone("+4412"), "*");
        assert_eq!(mask_phone(""), "*");
        assert!(!mask_phone("+15550001234").contains("5550001"));
    }

    #[test]
    fn addresses() {
        assert_eq!(mask_address("bc1qxy2kgdygjrsqtzq2n0yrf2493p83kkfjhx0wlh"), "bc1qxy…0wlh");
        assert_eq!(mask_address("short"), "…");
    }
}
