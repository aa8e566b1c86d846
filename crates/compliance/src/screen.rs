//! Name screening: every name of every entry (primary and aliases) in an index, queries answered with the entries
//! whose names score highest.
//!
//! Retrieval: each word of a name is indexed by its spelling, its rough sound ([`names::sound`]), its first three
//! letters (words of four or more) and its last three (words of six or more); a query's words find candidate names
//! through the same keys, so a typo, a transliteration or a missing word still finds the name through its other words
//! and keys. The candidates that share the most with the query (rare keys and exact spellings weigh more) are then
//! scored: 64 for a query of up to four words, fewer for a longer one (at least 24), which its shared words rank well.
//! Each distinct pair of words is compared once a query: names are stored as numbers into a vocabulary of words.
//!
//! Scoring is on words, in any order: each word of the query is matched with the most similar word of the candidate
//! (Jaro-Winkler), weighted by its length; so is each word of the candidate with the query's. The name score is 85 %
//! the query's side and 15 % the candidate's, so that a missing middle name costs a little and an extra word in the
//! query costs more. A date of birth or a country, when both sides have one, moves the score up when they agree and
//! down when they do not.

use rustc_hash::FxHashMap;
use serde::Serialize;

use crate::names::{self, sound};
use crate::ofac::Entry;
use crate::similarity::{Against, ONE};

/// The default threshold (parts per million) above which a match is a hit.
pub const DEFAULT_THRESHOLD: u32 = 920_000;

/// Candidates scored at most per query: those sharing the most words with it.
const MAX_CANDIDATES: usize = 64;

/// Query words × candidates scored at most: a long query shares several words with the name it is after, which its
/// retrieval weight ranks near the top, so it scores fewer candidates (never fewer than `MIN_CANDIDATES`) and costs
/// little more than a short one.
const WORD_CANDIDATES: usize = 256;
const MIN_CANDIDATES: usize = 24;

struct EntryInfo {
    id: u32,
    name: String,
    birth_years: Vec<u16>,
    countries: Vec<String>,
}

struct Name {
    entry: u32,
    text: String,
    /// Its words, as numbers in the screener's vocabulary.
    words: Vec<u32>,
    letters: u32,
}

/// What to screen.
#[derive(Clone, Copy, Debug, Default)]
pub struct Query<'a> {
    /// The name, in any form.
    pub name: &'a str,
    /// The person's country (ISO code), when known.
    pub country: Option<&'a str>,
    /// Their year of birth, when known.
    pub birth_year: Option<u16>,
}

/// One entry that matched, with its best-matching name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Match {
    /// The entry's number in its list.
    pub entry: u32,
    /// The entry's primary name.
    pub primary: String,
    /// The name of the entry that matched best (the primary name or an alias).
    pub matched: String,
    /// The score, in parts per million: the name's similarity moved by date of birth and country.
    pub score: u32,
    /// The names' similarity alone.
    pub name_score: u32,
}

/// Per-thread working memory of candidate retrieval, one slot a name, left zeroed after each query: a query touches
/// thousands of postings, and counting them in arrays is several times faster than in a hash map.
#[derive(Default)]
struct Scratch {
    /// The summed weight of each name found so far.
    total: Vec<u32>,
    /// The best weight of each name for the current query word.
    word: Vec<u32>,
    /// The names with a non-zero `total`, and with a non-zero `word`.
    touched: Vec<u32>,
    word_touched: Vec<u32>,
    /// The similarities computed for the current query.
    memo: Memo,
}

impl Scratch {
    fn size(&mut self, names: usize) {
        if self.total.len() < names {
            self.total.resize(names, 0);
            self.word.resize(names, 0);
        }
    }
}

/// The similarity of each word of the vocabulary met in a query's candidates with each of the query's words, computed
/// once a query: the candidates of a query share many words (an entry's aliases, a common given name), and comparing
/// the same two words again was most of a query's time.
#[derive(Default)]
struct Memo {
    /// Per vocabulary word: 0, or 1 + where its row starts in `rows`.
    slot: Vec<u32>,
    /// Rows of similarities, one value per query word.
    rows: Vec<u32>,
    /// The words with a row, to reset `slot` after the query.
    touched: Vec<u32>,
}

impl Memo {
    /// The similarities of vocabulary word `word` with each word of `query`.
    fn row(&mut self, word: u32, query: &[String], vocabulary: &[Box<str>]) -> &[u32] {
        let w = word as usize;
        if self.slot.len() < vocabulary.len() {
            self.slot.resize(vocabulary.len(), 0);
        }
        let start = match self.slot[w] {
            0 => {
                let start = self.rows.len();
                let against = Against::new(vocabulary[w].as_bytes());
                self.rows.extend(query.iter().map(|q| against.jaro_winkler(q.as_bytes())));
                self.slot[w] = u32::try_from(start + 1).unwrap_or(u32::MAX);
                self.touched.push(word);
                start
            }
            s => s as usize - 1,
        };
        &self.rows[start..start + query.len()]
    }

    fn clear(&mut self) {
        for w in self.touched.drain(..) {
            self.slot[w as usize] = 0;
        }
        self.rows.clear();
    }
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

/// An index of a list's names.
pub struct Screener {
    entries: Vec<EntryInfo>,
    names: Vec<Name>,
    /// Every distinct word of the names, once.
    vocabulary: Vec<Box<str>>,
    index: FxHashMap<String, Vec<u32>>,
}

/// The index keys of a word, with how much a match through each says: its spelling, its sound, its first letters.
fn keys(word: &str) -> impl Iterator<Item = (String, u32)> {
    let mut keys = vec![(format!("w:{word}"), 4)];
    if word.len() >= 3 {
        keys.push((format!("s:{}", sound(word)), 2));
    }
    if word.len() >= 4 {
        keys.push((format!("p:{}", &word[..3]), 1));
    }
    // A typo in the middle of a long word leaves its start or its end.
    if word.len() >= 6 {
        keys.push((format!("e:{}", &word[word.len() - 3..]), 1));
    }
    keys.into_iter()
}

/// How much a key that `postings` names share says: a key of a few names says much, one of thousands little.
fn rarity(postings: usize) -> u32 {
    16 - (usize::BITS - postings.leading_zeros()).min(15)
}

fn letters<S: AsRef<str>>(words: &[S]) -> u32 {
    words.iter().map(|w| w.as_ref().len() as u32).sum::<u32>().max(1)
}

/// How well each side's words are covered by the other's, in parts per million, weighted by word length: the query's
/// side and the candidate's. Each pair of words is compared once a query (`memo`).
fn coverage(query: &[String], query_letters: u32, name: &Name, vocabulary: &[Box<str>], memo: &mut Memo) -> (u32, u32) {
    // Each of the query's words' best similarity; on the stack for queries of sixteen words or fewer.
    let (mut small, mut large) = ([0u32; 16], Vec::new());
    let row_best: &mut [u32] = if query.len() <= small.len() {
        &mut small[..query.len()]
    } else {
        large.resize(query.len(), 0);
        &mut large
    };
    let mut name_sum = 0u64;
    for &w in &name.words {
        let mut column_best = 0;
        for (best, &similarity) in row_best.iter_mut().zip(memo.row(w, query, vocabulary)) {
            column_best = column_best.max(similarity);
            *best = (*best).max(similarity);
        }
        name_sum += u64::from(column_best) * vocabulary[w as usize].len() as u64;
    }
    let query_sum: u64 = query.iter().zip(row_best.iter()).map(|(q, best)| u64::from(*best) * q.len() as u64).sum();
    let q = u32::try_from(query_sum / u64::from(query_letters)).unwrap_or(ONE);
    let c = u32::try_from(name_sum / u64::from(name.letters)).unwrap_or(ONE);
    (q, c)
}

impl Screener {
    /// Indexes the names of `entries`.
    pub fn new(entries: &[Entry]) -> Screener {
        let mut screener =
            Screener { entries: Vec::new(), names: Vec::new(), vocabulary: Vec::new(), index: FxHashMap::default() };
        let mut numbers: FxHashMap<String, u32> = FxHashMap::default();
        for e in entries {
            let entry = screener.entries.len() as u32;
            screener.entries.push(EntryInfo {
                id: e.id,
                name: e.name.clone(),
                birth_years: e.birth_years.clone(),
                countries: e.countries.clone(),
            });
            for text in std::iter::once(&e.name).chain(e.aliases.iter().map(|a| &a.name)) {
                let words = names::words(text);
                if words.is_empty() {
                    continue;
                }
                let id = screener.names.len() as u32;
                for w in &words {
                    for (k, _) in keys(w) {
                        let postings = screener.index.entry(k).or_default();
                        if postings.last() != Some(&id) {
                            postings.push(id);
                        }
                    }
                }
                let letters = letters(&words);
                let words = words
                    .into_iter()
                    .map(|w| {
                        *numbers.entry(w).or_insert_with_key(|w| {
                            screener.vocabulary.push(w.as_str().into());
                            (screener.vocabulary.len() - 1) as u32
                        })
                    })
                    .collect();
                screener.names.push(Name { entry, text: text.clone(), letters, words });
            }
        }
        screener
    }

    /// How many entries and names are indexed.
    pub fn size(&self) -> (usize, usize) {
        (self.entries.len(), self.names.len())
    }

    /// The names that share the most with `words`, best first: each query word adds, for each name it finds, the
    /// weight of the best key that found it (spelling over sound over first letters, rare keys over common ones).
    fn candidates(&self, words: &[String], s: &mut Scratch) -> Vec<(u32, u32)> {
        s.size(self.names.len());
        for w in words {
            for (k, strength) in keys(w) {
                let Some(postings) = self.index.get(&k) else { continue };
                // A sound or a few letters that a thousand names share says almost nothing, and costs the most.
                if strength < 4 && postings.len() > 1_000 {
                    continue;
                }
                let weight = strength * rarity(postings.len());
                for &n in postings {
                    let best = &mut s.word[n as usize];
                    if *best == 0 {
                        s.word_touched.push(n);
                    }
                    *best = (*best).max(weight);
                }
            }
            for &n in &s.word_touched {
                let total = &mut s.total[n as usize];
                if *total == 0 {
                    s.touched.push(n);
                }
                *total += std::mem::take(&mut s.word[n as usize]);
            }
            s.word_touched.clear();
        }
        let mut candidates: Vec<(u32, u32)> =
            s.touched.iter().map(|&n| (n, std::mem::take(&mut s.total[n as usize]))).collect();
        s.touched.clear();
        let order = |a: &(u32, u32), b: &(u32, u32)| b.1.cmp(&a.1).then(a.0.cmp(&b.0));
        let most = (WORD_CANDIDATES / words.len().max(1)).clamp(MIN_CANDIDATES, MAX_CANDIDATES);
        if candidates.len() > most {
            candidates.select_nth_unstable_by(most, order);
            candidates.truncate(most);
        }
        candidates.sort_unstable_by(order);
        candidates
    }

    /// The entries best matching `query`, best first: `limit` of them, and any more that tie with the last.
    pub fn screen(&self, query: &Query<'_>, limit: usize) -> Vec<Match> {
        let words = names::words(query.name);
        if words.is_empty() {
            return Vec::new();
        }
        let query_letters = letters(&words);
        // Candidates, weighed by how many of the query's words found them, how closely and through how rare a key.
        // Each entry's best name: (score, name score, name).
        let mut best: FxHashMap<u32, (u32, u32, u32)> = FxHashMap::default();
        SCRATCH.with_borrow_mut(|scratch| {
            // Cleared before use, so that a query that panicked leaves nothing stale behind.
            scratch.memo.clear();
            for (n, _) in self.candidates(&words, scratch) {
                let name = &self.names[n as usize];
                let (q, c) = coverage(&words, query_letters, name, &self.vocabulary, &mut scratch.memo);
                let name_score = (u64::from(q) * 85 + u64::from(c) * 15) / 100;
                let name_score = u32::try_from(name_score).unwrap_or(ONE);
                let score = adjust(name_score, &self.entries[name.entry as usize], query);
                let kept = best.entry(name.entry).or_insert((score, name_score, n));
                if score > kept.0 {
                    *kept = (score, name_score, n);
                }
            }
        });
        // Best first; ties by entry number.
        let mut ranked: Vec<(u32, u32, u32, u32)> = best
            .into_iter()
            .map(|(e, (score, name_score, n))| (score, self.entries[e as usize].id, name_score, n))
            .collect();
        ranked.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        // Entries tied with the last one kept are kept too: nothing tells them apart, and dropping one would hide an
        // entry that matches exactly as well as one shown (six entries of the SDN list share the alias "AL-AQSA
        // FOUNDATION").
        let cut = ranked.get(limit.saturating_sub(1)).map(|r| r.0);
        let keep = ranked.iter().position(|r| limit == 0 || Some(r.0) < cut).unwrap_or(ranked.len());
        ranked.truncate(keep);
        ranked
            .into_iter()
            .map(|(score, id, name_score, n)| {
                let name = &self.names[n as usize];
                Match {
                    entry: id,
                    primary: self.entries[name.entry as usize].name.clone(),
                    matched: name.text.clone(),
                    score,
                    name_score,
                }
            })
            .collect()
    }
}

/// Moves a name score by what else is known: a year of birth within one of the entry's raises it by 0.03, any other
/// lowers it by 0.10; a country among the entry's raises it by 0.02, any other lowers it by 0.05.
fn adjust(score: u32, entry: &EntryInfo, query: &Query<'_>) -> u32 {
    let mut s = i64::from(score);
    if let Some(year) = query.birth_year
        && !entry.birth_years.is_empty()
    {
        s += if entry.birth_years.iter().any(|y| y.abs_diff(year) <= 1) { 30_000 } else { -100_000 };
    }
    if let Some(country) = query.country
        && !entry.countries.is_empty()
    {
        s += if entry.countries.iter().any(|c| c.eq_ignore_ascii_case(country)) { 20_000 } else { -50_000 };
    }
    u32::try_from(s.clamp(0, i64::from(ONE))).unwrap_or(0)
}
