//! `rampart risk`: the rule language's features, a rule file's check, and back-testing a rule file on recorded events.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use rampart_risk::{Decision, Engine, Event, Outcome, RuleSet};
use serde_json::json;

/// What to do with risk rules.
#[derive(Subcommand, Debug)]
pub enum RiskCommand {
    /// Lists every feature a rule's condition can read, with its type and meaning.
    Features,
    /// Compiles a rule file and lists its rules, or says precisely what is wrong with it.
    Check {
        /// The rule file (TOML); without it, the built-in default rules.
        #[arg(long)]
        rules: Option<PathBuf>,
    },
    /// Replays recorded events (JSON lines) through a rule file and reports what each rule would have decided.
    Backtest(BacktestArgs),
}

/// Flags of `rampart risk backtest`.
#[derive(Args, Debug)]
pub struct BacktestArgs {
    /// The rule file to test (TOML); `default` for the built-in rules.
    #[arg(long)]
    rules: String,
    /// The events, one JSON object a line, in the order they happened (as `GET /v1/risk/events` exports them).
    #[arg(long)]
    events: PathBuf,
    /// A rule file to compare with (e.g. the one in force): decisions that differ are counted and listed.
    #[arg(long)]
    baseline: Option<String>,
    /// How many differing decisions to list.
    #[arg(long, default_value_t = 10)]
    show: usize,
}

fn load_rules(spec: &str) -> anyhow::Result<RuleSet> {
    if spec == "default" {
        return Ok(RuleSet::default_rules());
    }
    let text = std::fs::read_to_string(spec).with_context(|| format!("cannot read the rule file {spec}"))?;
    RuleSet::parse(&text).with_context(|| spec.to_owned())
}

/// Reads a JSON-lines event file; a bad line is an error that names it.
pub fn read_events(path: &Path) -> anyhow::Result<Vec<Event>> {
    let file = std::fs::File::open(path).with_context(|| format!("cannot open the event file {}", path.display()))?;
    let mut events = Vec::new();
    for (n, line) in BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("{}: cannot read line {}", path.display(), n + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let event: Event = serde_json::from_str(&line)
            .with_context(|| format!("{}: line {} is not an event", path.display(), n + 1))?;
        if let Some(previous) = events.last().map(|e: &Event| e.at_ns)
            && event.at_ns < previous
        {
            bail!("{}: line {} goes back in time (events must be in the order they happened)", path.display(), n + 1);
        }
        events.push(event);
    }
    Ok(events)
}

/// What one rule did over a replay.
#[derive(Default)]
struct RuleTally {
    matched: u64,
    decided: u64,
    shadow: bool,
    outcome: &'static str,
}

fn replay(rules: RuleSet, events: &[Event]) -> (Vec<Decision>, BTreeMap<String, RuleTally>, Arc<RuleSet>) {
    let rules = Arc::new(rules);
    let mut tally: BTreeMap<String, RuleTally> = rules
        .rules
        .iter()
        .map(|r| {
            let t = RuleTally {
                shadow: r.mode == rampart_risk::Mode::Shadow,
                outcome: r.outcome.name(),
                ..RuleTally::default()
            };
            (r.name.to_string(), t)
        })
        .collect();
    let mut engine = Engine::new(rules.clone());
    let decisions: Vec<Decision> = events.iter().map(|e| engine.evaluate(e)).collect();
    for d in &decisions {
        for r in &d.reasons {
            if let Some(t) = tally.get_mut(&*r.rule) {
                t.matched += 1;
                // The rule decided when its outcome is the decision's (and it is enforced).
                if !r.shadow && r.outcome == d.outcome && d.outcome != Outcome::Allow {
                    t.decided += 1;
                }
            }
        }
    }
    (decisions, tally, rules)
}

fn outcomes(decisions: &[Decision]) -> BTreeMap<&'static str, u64> {
    let mut m = BTreeMap::new();
    for o in [Outcome::Allow, Outcome::Challenge, Outcome::Hold, Outcome::Freeze, Outcome::Block] {
        m.insert(o.name(), 0);
    }
    for d in decisions {
        *m.entry(d.outcome.name()).or_default() += 1;
    }
    m
}

/// Runs a `rampart risk` command.
pub fn run(command: RiskCommand) -> anyhow::Result<()> {
    match command {
        RiskCommand::Features => {
            for f in rampart_risk::features::all() {
                let ty = match f.ty {
                    rampart_risk::features::Type::Num => "number",
                    rampart_risk::features::Type::Bool => "boolean",
                    rampart_risk::features::Type::Str(_) => "name",
                };
                println!("{:<36} {:<8} {}", f.name, ty, f.doc);
            }
            Ok(())
        }
        RiskCommand::Check { rules } => {
            let set = match rules {
                Some(path) => load_rules(&path.to_string_lossy())?,
                None => RuleSet::default_rules(),
            };
            println!("rule set {:?}, version {}: {} rules compile", set.name, set.version, set.rules.len());
            for r in &set.rules {
                let mode = if r.mode == rampart_risk::Mode::Shadow { " (shadow)" } else { "" };
                println!(
                    "  {:<44} {:<9} score {:>3}{mode}  when {}",
                    r.name,
                    r.outcome.name(),
                    r.score,
                    r.when.source()
                );
            }
            Ok(())
        }
        RiskCommand::Backtest(args) => backtest(args),
    }
}

fn backtest(args: BacktestArgs) -> anyhow::Result<()> {
    let rules = load_rules(&args.rules)?;
    let baseline = args.baseline.as_deref().map(load_rules).transpose()?;
    let events = read_events(&args.events)?;
    let started = std::time::Instant::now();
    let (decisions, tally, rules) = replay(rules, &events);
    let elapsed = started.elapsed();
    println!(
        "{} events replayed through rule set {:?} version {} in {} ms",
        events.len(),
        rules.name,
        rules.version,
        elapsed.as_millis()
    );
    let by_outcome = outcomes(&decisions);
    println!("decisions: {}", by_outcome.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", "));
    println!("{:<44} {:>9} {:>9}  outcome", "rule", "matched", "decided");
    for (name, t) in &tally {
        let mode = if t.shadow { " (shadow: not enforced)" } else { "" };
        println!("{name:<44} {:>9} {:>9}  {}{mode}", t.matched, t.decided, t.outcome);
    }
    let mut changed_total = 0u64;
    if let Some(baseline) = baseline {
        let (before, _, base) = replay(baseline, &events);
        let changed: Vec<usize> = (0..events.len()).filter(|&i| before[i].outcome != decisions[i].outcome).collect();
        changed_total = changed.len() as u64;
        println!(
            "against rule set {:?} version {}: {} of {} decisions change",
            base.name,
            base.version,
            changed.len(),
            events.len()
        );
        for &i in changed.iter().take(args.show) {
            let e = &events[i];
            println!(
                "  event {} (user {}, {}): {} → {}",
                i + 1,
                e.user.0,
                e.kind().name(),
                before[i].summary(),
                decisions[i].summary()
            );
        }
    }
    let rules_json: serde_json::Map<String, serde_json::Value> = tally
        .iter()
        .map(|(k, t)| (k.clone(), json!({"matched": t.matched, "decided": t.decided, "shadow": t.shadow})))
        .collect();
    println!(
        "{}",
        json!({"backtest": rules.name, "version": rules.version, "events": events.len(), "outcomes": by_outcome,
               "rules": rules_json, "changed": changed_total})
    );
    Ok(())
}
