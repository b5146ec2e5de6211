//! `strata report`: one self-contained HTML file (inline SVG and CSS, no script, no
//! network) of the population at an as-of day, for an analyst (README "Report"):
//! the eight RFM segments as a grid sized by customers and monetary, the Pareto
//! curve with the value-tier cut-offs, the lifecycle funnel, churn risk by reason
//! and severity, the R/F/M score distributions, and the tier transitions of the last
//! 30 days the engine counted per day (`transitions/<day>` meta records).
//!
//! Every number comes from the exact dump ([`crate::dump`]) at the day, so it equals
//! `strata state summary`; each one shown carries `data-key="<dimension>/<tier>/
//! <customers|monetary>"` (and `at_risk/<reason>/<customers|severity>`,
//! `score/<r|f|m>/<1..5>`, `transition/<dimension>/<from>/<to>`) so a test can read
//! the page as a browser rendered it.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::audience::{Dimension, Tally};
use crate::config::Settings;
use crate::day::{format_day, Day};
use crate::dump::{self, DumpError};
use crate::policy::{self, Lifecycle, Rule, Segment, Severity, Tiers};
use crate::processor::{transitions_key, META_TRANSITIONS};
use crate::store::{Cf, Store, StoreError};

/// Days of transitions the report shows, ending at the as-of day.
pub const TRANSITION_WINDOW: Day = 30;

/// What the report draws, counted from the dump.
#[derive(Debug, Default)]
pub struct ReportData {
    pub as_of: Day,
    pub tally: Tally,
    /// Purchasers' window monetary (micros), largest first: the Pareto curve.
    pub monetary: Vec<u64>,
    pub pareto_high: Option<u64>,
    pub pareto_medium: Option<u64>,
    /// score name ("r", "f", "m") → counts of scores 1..=5.
    pub scores: BTreeMap<&'static str, [u64; 5]>,
    /// (reason, severity) → customers at risk.
    pub risk: BTreeMap<(&'static str, Severity), u64>,
    /// "dimension/from>to" → count over the last [`TRANSITION_WINDOW`] days.
    pub transitions: BTreeMap<String, u64>,
    pub transition_days: u32,
}

/// Count everything the report shows, at `as_of`.
pub fn collect<S: Store>(store: &S, s: &Settings, as_of: Day) -> Result<ReportData, DumpError> {
    let t = dump::exact_thresholds(store, s, as_of)?;
    let mut d = ReportData {
        as_of,
        pareto_high: t.pareto_high,
        pareto_medium: t.pareto_medium,
        ..ReportData::default()
    };
    for k in ["r", "f", "m"] {
        d.scores.insert(k, [0; 5]);
    }
    dump::dump_with(store, s, as_of, &t, &mut |r| {
        d.tally.add(&r);
        let micros = (r.monetary * 1e6).round() as u64;
        if r.recency_days.is_some() && micros > 0 {
            d.monetary.push(micros);
        }
        for (k, v) in [("r", r.r_score), ("f", r.f_score), ("m", r.m_score)] {
            if let Some(v) = v {
                d.scores.get_mut(k).unwrap()[(v as usize).clamp(1, 5) - 1] += 1;
            }
        }
        let severity = policy::severity(&Tiers {
            rfm_segment: r.rfm_segment,
            value_tier: r.value_tier,
            lifecycle: r.lifecycle,
        });
        for reason in &r.churn_risk {
            *d.risk.entry((reason, severity)).or_default() += 1;
        }
        Ok(())
    })?;
    d.monetary.sort_unstable_by(|a, b| b.cmp(a));
    let from = transitions_key(as_of - TRANSITION_WINDOW + 1);
    let to = transitions_key(as_of + 1);
    let mut days = std::collections::BTreeSet::new();
    store.scan(Cf::Meta, &from, Some(&to), &mut |k, v| {
        if !k.starts_with(META_TRANSITIONS) {
            return Ok(true);
        }
        let counts: BTreeMap<String, u64> =
            serde_json::from_slice(v).map_err(|_| StoreError::Corrupt {
                key: String::from_utf8_lossy(k).into_owned(),
                source: crate::store::codec::CodecError("unreadable transitions"),
            })?;
        days.insert(k.to_vec());
        for (t, n) in counts {
            *d.transitions.entry(t).or_default() += n;
        }
        Ok(true)
    })?;
    d.transition_days = days.len() as u32;
    Ok(d)
}

fn segment_label(s: Segment) -> &'static str {
    match s {
        Segment::ImportantValue => "重要价值",
        Segment::ImportantDevelop => "重要发展",
        Segment::ImportantKeep => "重要保持",
        Segment::ImportantRetain => "重要挽留",
        Segment::GeneralValue => "一般价值",
        Segment::GeneralDevelop => "一般发展",
        Segment::GeneralKeep => "一般保持",
        Segment::GeneralRetain => "一般挽留",
        Segment::None => "无购买",
    }
}

fn lifecycle_label(l: Lifecycle) -> &'static str {
    match l {
        Lifecycle::Prospect => "潜在",
        Lifecycle::Intent => "意向",
        Lifecycle::New => "新客",
        Lifecycle::FirstPurchase => "首单",
        Lifecycle::Repeat => "复购",
        Lifecycle::Super => "超级",
        Lifecycle::Lapsed => "流失",
    }
}

fn money(micros: u128) -> String {
    let v = micros as f64 / 1e6;
    format!("{v:.2}")
}

fn pct(part: f64, whole: f64) -> String {
    if whole <= 0.0 {
        return "0.0%".into();
    }
    format!("{:.1}%", 100.0 * part / whole)
}

const CSS: &str = r#"
body{font-family:"WenQuanYi Micro Hei","Noto Sans CJK SC",system-ui,sans-serif;margin:24px;color:#1f2933;background:#fff}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #d9e2ec;padding-bottom:4px}
.sub{color:#52606d;font-size:13px} table{border-collapse:collapse;font-size:13px}
td,th{border:1px solid #d9e2ec;padding:3px 8px;text-align:right} th{background:#f0f4f8}
td.l,th.l{text-align:left} .row{display:flex;gap:32px;flex-wrap:wrap;align-items:flex-start}
svg text{font-size:12px;fill:#1f2933} .muted{fill:#7b8794}
"#;

/// The HTML page of `d`.
pub fn render(d: &ReportData, s: &Settings) -> String {
    let mut h = String::with_capacity(64 * 1024);
    let total = d.tally.customers;
    let cell = |dim: Dimension, t: &str| {
        d.tally
            .cells
            .get(&format!("{}/{t}", dim.as_str()))
            .copied()
            .unwrap_or_default()
    };
    let purchasers_micros: u128 = d.monetary.iter().map(|&m| m as u128).sum();
    let _ = write!(
        h,
        r#"<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>strata report {day}</title><style>{CSS}</style></head><body>
<h1>Customer tiers as of <span data-key="as_of">{day}</span></h1>
<div class="sub"><span data-key="customers">{total}</span> customers · <span data-key="purchasers">{np}</span> with a purchase in the window · monetary <span data-key="monetary">{m}</span> · at churn risk <span data-key="at_risk/customers">{risk}</span> · window {w} days</div>
"#,
        day = format_day(d.as_of),
        np = d.monetary.len(),
        m = money(purchasers_micros),
        risk = d.tally.at_risk,
        w = s.window_days,
    );

    // 1. RFM grid: important on top, general below; value/develop/keep/retain.
    h.push_str(r#"<h2>RFM segments (客户分层)</h2><div class="row"><svg id="rfm-grid" width="760" height="330" viewBox="0 0 760 330">"#);
    let segs = [
        [
            Segment::ImportantValue,
            Segment::ImportantDevelop,
            Segment::ImportantKeep,
            Segment::ImportantRetain,
        ],
        [
            Segment::GeneralValue,
            Segment::GeneralDevelop,
            Segment::GeneralKeep,
            Segment::GeneralRetain,
        ],
    ];
    let max_n = Segment::ALL
        .iter()
        .filter(|s| **s != Segment::None)
        .map(|s| cell(Dimension::RfmSegment, s.as_str()).customers)
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let seg_total: u128 = Segment::ALL
        .iter()
        .map(|s| cell(Dimension::RfmSegment, s.as_str()).micros)
        .sum();
    for (row, line) in segs.iter().enumerate() {
        for (col, seg) in line.iter().enumerate() {
            let c = cell(Dimension::RfmSegment, seg.as_str());
            let (x, y) = (col as f64 * 190.0, row as f64 * 165.0);
            // Area ∝ customers (the largest segment fills its box); the bar ∝ its
            // share of monetary.
            let side = 92.0 * (c.customers as f64 / max_n).sqrt();
            let bar = 170.0
                * if seg_total > 0 {
                    c.micros as f64 / seg_total as f64
                } else {
                    0.0
                };
            let color = if row == 0 { "#2f80ed" } else { "#9fb3c8" };
            let _ = write!(
                h,
                r##"<g data-segment="{name}"><rect x="{x}" y="{y}" width="180" height="155" fill="#f5f7fa" stroke="#d9e2ec"/>
<rect x="{sx:.1}" y="{sy:.1}" width="{side:.1}" height="{side:.1}" fill="{color}" opacity="0.85"/>
<text x="{tx}" y="{ty}">{label} {name}</text>
<text x="{tx}" y="{ty2}" class="muted"><tspan data-key="rfm_segment/{name}/customers">{n}</tspan> customers · {share}</text>
<rect x="{tx}" y="{by}" width="{bar:.1}" height="6" fill="#f2994a"/>
<text x="{tx}" y="{ty3}" class="muted">monetary <tspan data-key="rfm_segment/{name}/monetary">{m}</tspan></text></g>
"##,
                name = seg.as_str(),
                label = segment_label(*seg),
                sx = x + 90.0 - side / 2.0,
                sy = y + 22.0 + (92.0 - side) / 2.0,
                tx = x + 6.0,
                ty = y + 14.0,
                ty2 = y + 128.0,
                by = y + 134.0,
                ty3 = y + 151.0,
                n = c.customers,
                share = pct(c.customers as f64, total as f64),
                m = money(c.micros),
            );
        }
    }
    let none = cell(Dimension::RfmSegment, Segment::None.as_str());
    let _ = write!(
        h,
        r#"</svg></div><div class="sub">Without a purchase in the window (segment <code>none</code>): <span data-key="rfm_segment/none/customers">{}</span> customers. Square area ∝ customers, orange bar ∝ share of monetary.</div>"#,
        none.customers
    );

    // 2. Pareto curve with the cut-offs.
    let v = &s.raw.value_tiers;
    h.push_str(r#"<h2>Pareto curve and value tiers</h2><div class="row"><svg id="pareto" width="420" height="300" viewBox="0 0 420 300">"#);
    let (px, py, pw, ph) = (50.0, 20.0, 340.0, 230.0);
    let _ = write!(
        h,
        r##"<rect x="{px}" y="{py}" width="{pw}" height="{ph}" fill="none" stroke="#bcccdc"/>
<text x="{px}" y="{ly}" class="muted">share of purchasers (largest first) →</text><text x="4" y="{py2}" class="muted">100%</text><text x="14" y="{by}" class="muted">0%</text>"##,
        ly = py + ph + 30.0,
        py2 = py + 4.0,
        by = py + ph,
    );
    if !d.monetary.is_empty() && purchasers_micros > 0 {
        let n = d.monetary.len();
        let step = (n / 300).max(1);
        let mut run = 0u128;
        let mut pts = format!("{px},{}", py + ph);
        for (i, &m) in d.monetary.iter().enumerate() {
            run += m as u128;
            if i % step == 0 || i == n - 1 {
                let x = px + pw * (i + 1) as f64 / n as f64;
                let y = py + ph * (1.0 - run as f64 / purchasers_micros as f64);
                let _ = write!(pts, " {x:.1},{y:.1}");
            }
        }
        let _ = write!(
            h,
            r##"<polyline points="{pts}" fill="none" stroke="#2f80ed" stroke-width="2"/>"##
        );
        for (name, share, cut) in [
            ("high", v.high_share, d.pareto_high),
            ("medium", v.medium_share, d.pareto_medium),
        ] {
            let y = py + ph * (1.0 - share);
            // Where the curve reaches the share: the customers at or above the cut-off.
            let at = cut.map_or(0, |c| d.monetary.iter().take_while(|&&m| m >= c).count());
            let x = px + pw * at as f64 / n as f64;
            let _ = write!(
                h,
                r##"<line x1="{px}" y1="{y:.1}" x2="{x2}" y2="{y:.1}" stroke="#f2994a" stroke-dasharray="4 3"/>
<line x1="{x:.1}" y1="{py}" x2="{x:.1}" y2="{yb}" stroke="#f2994a" stroke-dasharray="4 3"/>
<text x="{tx:.1}" y="{ty:.1}">{name} ≥ <tspan data-key="cutoff/{name}">{cut}</tspan>: {at} customers, {share_pct}%</text>"##,
                x2 = px + pw,
                yb = py + ph,
                tx = px + 6.0,
                ty = py + ph - if name == "high" { 34.0 } else { 16.0 },
                share_pct = (share * 100.0).round(),
                cut = cut.map_or("—".to_string(), |c| money(c as u128)),
            );
        }
    }
    h.push_str(
        "</svg><table><tr><th class=\"l\">value tier</th><th>customers</th><th>monetary</th></tr>",
    );
    for t in Dimension::ValueTier.tiers() {
        let c = cell(Dimension::ValueTier, t);
        let _ = write!(
            h,
            r#"<tr><td class="l">{t}</td><td data-key="value_tier/{t}/customers">{}</td><td data-key="value_tier/{t}/monetary">{}</td></tr>"#,
            c.customers,
            money(c.micros)
        );
    }
    h.push_str("</table></div>");

    // 3. Lifecycle funnel.
    h.push_str(r#"<h2>Lifecycle funnel (生命周期)</h2><svg id="funnel" width="760" height="250" viewBox="0 0 760 250">"#);
    // The stages of the configured path (`lifecycle.path`).
    let high_ticket = s.raw.lifecycle.path == crate::config::LifecyclePath::HighTicket;
    let stages: Vec<Lifecycle> = Lifecycle::FUNNEL
        .into_iter()
        .filter(|l| match l {
            Lifecycle::New => !high_ticket,
            Lifecycle::Prospect | Lifecycle::Intent => high_ticket,
            _ => true,
        })
        .collect();
    let max_stage = stages
        .iter()
        .map(|l| cell(Dimension::Lifecycle, l.as_str()).customers)
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    for (i, l) in stages.iter().enumerate() {
        let c = cell(Dimension::Lifecycle, l.as_str());
        let w = 480.0 * c.customers as f64 / max_stage;
        let y = 8.0 + i as f64 * 34.0;
        let _ = write!(
            h,
            r##"<g data-stage="{name}"><text x="0" y="{ty}">{label} {name}</text><rect x="{x:.1}" y="{y}" width="{w:.1}" height="26" fill="#27ae60" opacity="0.8"/><text x="{nx}" y="{ty}"><tspan data-key="lifecycle/{name}/customers">{n}</tspan> · {share}</text></g>"##,
            name = l.as_str(),
            label = lifecycle_label(*l),
            ty = y + 17.0,
            x = 150.0 + (480.0 - w) / 2.0,
            nx = 640.0,
            n = c.customers,
            share = pct(c.customers as f64, total as f64),
        );
    }
    h.push_str("</svg>");

    // 4. Churn risk by reason and severity.
    h.push_str(r#"<h2>Churn risk by reason and severity</h2><div class="row"><table id="churn"><tr><th class="l">reason</th><th>customers</th><th>high</th><th>medium</th><th>low</th></tr>"#);
    for r in Rule::ALL {
        let name = r.as_str();
        let _ = write!(
            h,
            r#"<tr><td class="l">{name}</td><td data-key="at_risk/{name}/customers">{}</td>"#,
            cell(Dimension::ChurnRisk, name).customers
        );
        for sev in [Severity::High, Severity::Medium, Severity::Low] {
            let _ = write!(
                h,
                r#"<td data-key="at_risk/{name}/{sev}">{}</td>"#,
                d.risk.get(&(name, sev)).copied().unwrap_or(0),
                sev = sev.as_str()
            );
        }
        h.push_str("</tr>");
    }
    let max_reason = Rule::ALL
        .iter()
        .map(|r| cell(Dimension::ChurnRisk, r.as_str()).customers)
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    h.push_str(r#"</table><svg id="churn-bars" width="360" height="140" viewBox="0 0 360 140">"#);
    for (i, r) in Rule::ALL.iter().enumerate() {
        let mut x = 90.0;
        let y = 6.0 + i as f64 * 32.0;
        let _ = write!(h, r#"<text x="0" y="{}">{}</text>"#, y + 16.0, r.as_str());
        for (sev, color) in [
            (Severity::High, "#eb5757"),
            (Severity::Medium, "#f2994a"),
            (Severity::Low, "#f2c94c"),
        ] {
            let n = d.risk.get(&(r.as_str(), sev)).copied().unwrap_or(0);
            let w = 260.0 * n as f64 / max_reason;
            let _ = write!(
                h,
                r#"<rect x="{x:.1}" y="{y}" width="{w:.1}" height="22" fill="{color}"/>"#
            );
            x += w;
        }
    }
    h.push_str("</svg></div>");

    // 5. Score distributions.
    h.push_str(r#"<h2>R, F, M score distributions</h2><div class="row">"#);
    for (k, label) in [
        ("r", "R (recency)"),
        ("f", "F (frequency)"),
        ("m", "M (monetary)"),
    ] {
        let counts = d.scores[k];
        let max = counts.iter().copied().max().unwrap_or(0).max(1) as f64;
        let _ = write!(
            h,
            r#"<svg id="score-{k}" width="230" height="170" viewBox="0 0 230 170"><text x="0" y="12">{label}</text>"#
        );
        for (i, n) in counts.iter().enumerate() {
            let bh = 110.0 * *n as f64 / max;
            let x = 10.0 + i as f64 * 42.0;
            let _ = write!(
                h,
                r##"<rect x="{x}" y="{y:.1}" width="34" height="{bh:.1}" fill="#9b51e0" opacity="0.8"/><text x="{tx}" y="150">{s}</text><text x="{x}" y="165" class="muted" data-key="score/{k}/{s}">{n}</text>"##,
                y = 135.0 - bh,
                tx = x + 12.0,
                s = i + 1,
            );
        }
        h.push_str("</svg>");
    }
    h.push_str("</div>");

    // 6. Transitions of the last 30 days.
    let _ = write!(
        h,
        r#"<h2>Tier transitions, last {TRANSITION_WINDOW} days</h2><div class="sub">Counted by the engine per day (every <code>tier_changed</code> with a previous tier); {} days with transitions in the state.</div>"#,
        d.transition_days
    );
    if d.transitions.is_empty() {
        h.push_str(r#"<p id="no-transitions">The state holds no transitions for these days.</p>"#);
    } else {
        for dim in [
            Dimension::RfmSegment,
            Dimension::ValueTier,
            Dimension::Lifecycle,
        ] {
            let tiers = dim.tiers();
            let prefix = format!("{}/", dim.as_str());
            let max = d
                .transitions
                .iter()
                .filter(|(k, _)| k.starts_with(&prefix))
                .map(|(_, n)| *n)
                .max()
                .unwrap_or(0);
            if max == 0 {
                continue;
            }
            let _ = write!(
                h,
                r#"<h3 class="sub">{} (rows: from, columns: to)</h3><table class="transitions" data-dimension="{}"><tr><th class="l">from \ to</th>"#,
                dim.as_str(),
                dim.as_str()
            );
            for t in &tiers {
                let _ = write!(h, "<th>{t}</th>");
            }
            h.push_str("</tr>");
            for from in &tiers {
                let _ = write!(h, r#"<tr><td class="l">{from}</td>"#);
                for to in &tiers {
                    let key = format!("{}/{from}>{to}", dim.as_str());
                    match d.transitions.get(&key) {
                        Some(n) => {
                            let alpha = 0.15 + 0.75 * *n as f64 / max as f64;
                            let _ = write!(
                                h,
                                r#"<td style="background:rgba(47,128,237,{alpha:.2})" data-key="transition/{}/{from}/{to}">{n}</td>"#,
                                dim.as_str()
                            );
                        }
                        None => h.push_str("<td></td>"),
                    }
                }
                h.push_str("</tr>");
            }
            h.push_str("</table>");
        }
    }

    // The summary's numbers in one table (what a test or a spreadsheet reads).
    h.push_str(r#"<h2>All figures</h2><table id="summary"><tr><th class="l">dimension</th><th class="l">tier</th><th>customers</th><th>monetary</th></tr>"#);
    for dim in [
        Dimension::RfmSegment,
        Dimension::ValueTier,
        Dimension::Lifecycle,
    ] {
        for t in dim.tiers() {
            let c = cell(dim, t);
            let _ = write!(
                h,
                r#"<tr><td class="l">{}</td><td class="l">{t}</td><td>{}</td><td>{}</td></tr>"#,
                dim.as_str(),
                c.customers,
                money(c.micros)
            );
        }
    }
    let _ = writeln!(
        h,
        r#"</table><p class="sub">strata {} · the exact dump at {} (every customer evaluated against population thresholds computed at that day).</p></body></html>"#,
        env!("CARGO_PKG_VERSION"),
        format_day(d.as_of)
    );
    h
}

/// Write the report of `store` at `as_of` to `out`.
pub fn write<S: Store>(
    store: &S,
    s: &Settings,
    as_of: Day,
    out: &std::path::Path,
) -> anyhow::Result<ReportData> {
    use anyhow::Context;
    let d = collect(store, s, as_of)?;
    std::fs::write(out, render(&d, s))
        .with_context(|| format!("cannot write the report to {}", out.display()))?;
    Ok(d)
}
