//! Names as screening compares them: transliterated to ASCII, lower case, punctuation dropped, titles and company
//! forms removed, split into words.
//!
//! `"Dr. José  MARTÍNEZ-López"` and `"martinez lopez, jose"` give the same words in a different order; scoring
//! ([`crate::screen`]) does not care about order. Dots and apostrophes join (`S.A.` is `sa`, `O'Brien` is `obrien`);
//! every other mark separates words.

/// Words that say what someone is, not who.
const TITLES: &[&str] = &[
    "mr", "mrs", "ms", "miss", "dr", "prof", "sir", "sheikh", "shaykh", "sheik", "haji", "hajji", "general", "gen",
    "colonel", "col", "captain", "capt", "major", "maj", "lt", "admiral", "mullah", "imam", "jr", "sr",
];

/// Legal forms of companies, in their dotted and undotted spellings once dots are dropped.
const COMPANY_FORMS: &[&str] = &[
    "ltd",
    "limited",
    "llc",
    "inc",
    "incorporated",
    "corp",
    "corporation",
    "co",
    "company",
    "plc",
    "sa",
    "sas",
    "srl",
    "sarl",
    "gmbh",
    "ag",
    "bv",
    "nv",
    "jsc",
    "ojsc",
    "cjsc",
    "pjsc",
    "oao",
    "ooo",
    "zao",
    "llp",
    "lp",
    "pte",
    "pvt",
    "fze",
    "fzco",
    "fzc",
    "fzllc",
    "sdn",
    "bhd",
    "cv",
    "kg",
    "spa",
    "the",
    "of",
    "and",
    "de",
    "establishment",
    "est",
];

/// The words of `name`, normalised, in their order.
pub fn words(name: &str) -> Vec<String> {
    let ascii = deunicode::deunicode(name);
    let mut words = Vec::new();
    let mut word = String::new();
    for c in ascii.chars() {
        if c.is_ascii_alphanumeric() {
            word.push(c.to_ascii_lowercase());
        } else if c == '.' || c == '\'' || c == '`' {
            // Joins: S.A. → sa, O'Brien → obrien.
        } else if !word.is_empty() {
            words.push(std::mem::take(&mut word));
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    let meaningful: Vec<String> = words
        .iter()
        .filter(|w| !TITLES.contains(&w.as_str()) && !COMPANY_FORMS.contains(&w.as_str()))
        .cloned()
        .collect();
    // A name made only of such words ("The Company") is kept as it is.
    if meaningful.is_empty() { words } else { meaningful }
}

/// A rough sound of a word, so that spellings of one name meet in the index: the first letter, then the consonants
/// with those that sound alike merged (c/k/q, s/z, f/ph/v, d/t, j/g before e or i ...), vowels and repeats dropped.
/// Only a key to find candidates with; scores come from the spelling itself.
pub fn sound(word: &str) -> String {
    let b = word.as_bytes();
    let mut key = String::new();
    let Some(&first) = b.first() else { return key };
    let mut last = class(first);
    key.push(char::from(if last == 0 { first } else { last }));
    let mut i = 1;
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        let (k, skip) = match (c, next) {
            (b'p', Some(b'h')) => (b'f', 2),
            (b'c', Some(b'h')) | (b's', Some(b'h')) => (b'x', 2),
            (b'k', Some(b'h')) => (b'k', 2),
            (b'g', Some(b'h')) => (b'g', 2),
            (b'd', Some(b'h')) | (b't', Some(b'h')) => (b't', 2),
            _ => (class(c), 1),
        };
        if k != 0 && k != last {
            key.push(char::from(k));
        }
        last = k;
        i += skip;
    }
    key
}

fn class(c: u8) -> u8 {
    match c {
        b'a' | b'e' | b'i' | b'o' | b'u' | b'y' | b'h' | b'w' => 0,
        b'c' | b'k' | b'q' => b'k',
        b's' | b'z' | b'x' => b's',
        b'f' | b'v' => b'f',
        b'd' | b't' => b't',
        b'j' | b'g' => b'j',
        b'b' | b'p' => b'p',
        b'm' | b'n' => b'n',
        c => c,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accents_case_punctuation_titles_and_company_forms_go() {
        assert_eq!(words("Dr. José  MARTÍNEZ-López"), ["jose", "martinez", "lopez"]);
        assert_eq!(words("ANGLO-CARIBBEAN CO., LTD."), ["anglo", "caribbean"]);
        assert_eq!(words("Banco Nacional S.A. de C.V."), ["banco", "nacional"]);
        assert_eq!(words("O'Brien, Sean"), ["obrien", "sean"]);
        assert_eq!(words("Владимир Путин"), ["vladimir", "putin"]);
        assert_eq!(words("The Company"), ["the", "company"]);
        assert!(words("  ,.; ").is_empty());
    }

    #[test]
    fn spellings_of_one_name_sound_alike() {
        assert_eq!(sound("mohammed"), sound("muhamad"));
        assert_eq!(sound("qaddafi"), sound("kadafi"));
        assert_eq!(sound("yusuf"), sound("yousef"));
        assert_ne!(sound("smith"), sound("jones"));
    }
}
