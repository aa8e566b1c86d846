//! The readable form of a proof-of-reserves report: one static HTML page (no script, no outside resource) with the
//! root, each asset's liabilities, reserves by wallet, ratio and cold share, a bar chart of both sides, every
//! attested address, and the signature with the key to check it under. The JSON report is what is signed; the page
//! is drawn from the report as checked by `rampart-verify`'s code.

use rampart_notify::escape_html as esc;
use rampart_verify::report::{AssetSummary, ReportSummary};
use serde_json::Value;

/// An amount in smallest units shown in whole units (`123456789`, 8 decimals → `1.23456789`).
pub fn units(amount: u128, decimals: u8) -> String {
    let scale = 10u128.pow(u32::from(decimals.min(38)));
    let (whole, frac) = (amount / scale, amount % scale);
    if decimals == 0 || frac == 0 {
        return whole.to_string();
    }
    let frac = format!("{frac:0width$}", width = usize::from(decimals));
    format!("{whole}.{}", frac.trim_end_matches('0'))
}

/// Basis points as a percentage with two decimals.
pub fn percent(bps: Option<u128>) -> String {
    bps.map_or_else(|| "—".to_owned(), |b| format!("{}.{:02} %", b / 100, b % 100))
}

const WIDTH: u128 = 560;

/// One asset's bars: liabilities, then reserves split into cold, hot and deposit addresses.
fn chart(a: &AssetSummary) -> String {
    let Some(reserves) = a.reserves else {
        return "<p>No reserves attested for this asset.</p>".into();
    };
    let top = a.liabilities.max(reserves).max(1);
    let w = |x: u128| x.saturating_mul(WIDTH) / top;
    let mut svg = format!(
        "<svg role=\"img\" aria-label=\"liabilities and reserves of {code}\" width=\"{total}\" height=\"74\" \
         xmlns=\"http://www.w3.org/2000/svg\">",
        code = esc(&a.code),
        total = WIDTH + 150
    );
    svg.push_str(&format!(
        "<text x=\"0\" y=\"20\">liabilities</text><rect x=\"100\" y=\"6\" width=\"{}\" height=\"20\" fill=\"#8a8f98\"/>",
        w(a.liabilities)
    ));
    svg.push_str("<text x=\"0\" y=\"56\">reserves</text>");
    let mut x = 100u128;
    for (part, colour, label) in
        [(a.cold, "#1f5fa8", "cold"), (a.hot, "#e0892b", "hot"), (a.deposit, "#58a65c", "deposit")]
    {
        let width = w(part);
        if width > 0 {
            svg.push_str(&format!(
                "<rect x=\"{x}\" y=\"42\" width=\"{width}\" height=\"20\" fill=\"{colour}\"><title>{label}: {}</title></rect>",
                units(part, a.decimals)
            ));
        }
        x += width;
    }
    svg.push_str("</svg>");
    svg
}

/// The page.
pub fn render(summary: &ReportSummary, report: &Value, signature: &str, public_key: &str) -> String {
    let mut html = String::new();
    html.push_str(&format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Proof of reserves — {ex}, {snap}</title>\n\
         <style>body{{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}}\
         table{{border-collapse:collapse;margin:0.5rem 0 1.5rem}}td,th{{border:1px solid #ccc;padding:0.3rem 0.6rem;text-align:right}}\
         th{{background:#f3f3f3}}td.l,th.l{{text-align:left}}code{{word-break:break-all}}.ok{{color:#1a7f37}}.low{{color:#b42318}}\
         </style></head><body>\n<h1>Proof of reserves: {ex}</h1>\n\
         <p>Snapshot <b>{snap}</b>, ledger point {seq}. Liabilities tree root (every customer checks their inclusion \
         proof against it):<br><code>{root}</code></p>\n",
        ex = esc(&summary.exchange),
        snap = esc(&summary.snapshot),
        seq = report["ledger_seq"].as_i64().unwrap_or(0),
        root = esc(&summary.root),
    ));
    html.push_str(
        "<table><tr><th class=\"l\">asset</th><th>liabilities</th><th>reserves</th><th>ratio</th><th>cold share</th>\
         <th>addresses</th><th class=\"l\">block</th></tr>\n",
    );
    for a in &summary.assets {
        let class = match a.ratio_bps {
            Some(r) if r >= 10_000 => "ok",
            Some(_) => "low",
            None => "",
        };
        html.push_str(&format!(
            "<tr><td class=\"l\">{code}</td><td>{l}</td><td>{r}</td><td class=\"{class}\">{ratio}</td><td>{cold}</td>\
             <td>{n}</td><td class=\"l\">{block}</td></tr>\n",
            code = esc(&a.code),
            l = units(a.liabilities, a.decimals),
            r = a.reserves.map_or_else(|| "not attested".into(), |r| units(r, a.decimals)),
            ratio = percent(a.ratio_bps),
            cold = percent(a.cold_share_bps),
            n = a.addresses,
            block = a.chain.as_ref().map_or_else(String::new, |(h, hash)| format!("{h} <code>{}</code>", esc(hash))),
        ));
    }
    html.push_str("</table>\n");
    for (a, raw) in summary.assets.iter().zip(report["assets"].as_array().into_iter().flatten()) {
        html.push_str(&format!("<h2>{}</h2>\n{}\n", esc(&a.code), chart(a)));
        let addresses = raw["addresses"].as_array().cloned().unwrap_or_default();
        if addresses.is_empty() {
            continue;
        }
        html.push_str(
            "<table><tr><th class=\"l\">address</th><th class=\"l\">wallet</th><th>balance</th><th>outputs</th>\
             <th class=\"l\">BIP-340 signature</th></tr>\n",
        );
        for ad in addresses {
            let balance: u128 = ad["balance"].as_str().and_then(|b| b.parse().ok()).unwrap_or(0);
            html.push_str(&format!(
                "<tr><td class=\"l\"><code>{}</code></td><td class=\"l\">{}</td><td>{}</td><td>{}</td>\
                 <td class=\"l\"><code>{}</code></td></tr>\n",
                esc(ad["address"].as_str().unwrap_or("")),
                esc(ad["wallet"].as_str().unwrap_or("")),
                units(balance, a.decimals),
                ad["outputs"].as_array().map_or(0, Vec::len),
                esc(ad["signature"].as_str().unwrap_or("")),
            ));
        }
        html.push_str("</table>\n");
    }
    html.push_str(&format!(
        "<h2>Checking this report</h2>\n<p>The signed document is <code>report.json</code>; its Ed25519 signature \
         (over <code>rampart-por-v1 report\\0</code> and the file's bytes) is in <code>report.json.sig</code>:</p>\n\
         <p>signature <code>{sig}</code><br>service key <code>{key}</code></p>\n\
         <pre>rampart-verify report report.json --signature report.json.sig --key {key}</pre>\n\
         <p>checks the signature, every address's BIP-340 signature over its statement (exchange, snapshot, asset, \
         block, address), every balance against its outputs, and the sums, ratios and cold shares. That each listed \
         output was unspent at the block is for a Bitcoin node to confirm; your own inclusion in the liabilities is \
         checked with your proof against the root above (<code>rampart-verify proof</code>, or the page at \
         <code>/reserves/verify</code>).</p>\n</body></html>\n",
        sig = esc(signature),
        key = esc(public_key),
    ));
    html
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_show_in_whole_units() {
        assert_eq!(units(123_456_789, 8), "1.23456789");
        assert_eq!(units(100_000_000, 8), "1");
        assert_eq!(units(150_000_000, 8), "1.5");
        assert_eq!(units(5, 2), "0.05");
        assert_eq!(units(7, 0), "7");
        assert_eq!(percent(Some(10_512)), "105.12 %");
        assert_eq!(percent(None), "—");
    }

    #[test]
    fn the_page_escapes_what_it_is_given_and_draws_both_sides() {
        let summary = ReportSummary {
            exchange: "<script>alert(1)</script>".into(),
            snapshot: "s\"1".into(),
            root: "ab".repeat(32),
            assets: vec![AssetSummary {
                code: "BTC".into(),
                decimals: 8,
                liabilities: 100,
                reserves: Some(120),
                cold: 115,
                hot: 5,
                deposit: 0,
                ratio_bps: Some(12_000),
                cold_share_bps: Some(9_583),
                addresses: 0,
                chain: Some((7, "00".repeat(32))),
            }],
        };
        let report = serde_json::json!({"ledger_seq": 3, "assets": [{"addresses": []}]});
        let html = render(&summary, &report, "<sig>", "key");
        assert!(!html.contains("<script>") && !html.contains("<sig>"), "{html}");
        assert!(html.contains("&lt;script&gt;") && html.contains("120.00 %") && html.contains("95.83 %"));
        // Reserves 120 are the widest bar (560 px): liabilities 100 → 466, cold 115 → 536, hot 5 → 23.
        for bar in ["width=\"466\"", "width=\"536\"", "width=\"23\""] {
            assert!(html.contains(bar), "{bar} in {html}");
        }
    }
}
