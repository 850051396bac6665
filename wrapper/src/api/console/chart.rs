//! A stacked bar chart drawn as inline SVG on the server: no script, no external asset, so it
//! renders under the console's content security policy and offline. Every value that did not
//! come from a literal is escaped.

use std::{collections::BTreeMap, fmt::Write};

use sync_web::html::escape;

/// Series colours (distinct for the colour-blind: the Okabe–Ito palette).
const COLOURS: [&str; 7] = [
    "#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442",
];

/// A round number at or above `max` for the axis (1, 2 or 5 times a power of ten).
fn axis_top(max: i64) -> i64 {
    let mut unit = 1i64;
    loop {
        for step in [1, 2, 5] {
            if step * unit >= max.max(1) {
                return step * unit;
            }
        }
        unit = unit.saturating_mul(10);
    }
}

/// Bars per label, each stacked from `series` (name → one value per label), with a y axis, a
/// legend and a `<title>` per segment (the exact figure on hover); `empty` is written across
/// the plot when every value is zero. `id` names the element. With more than a dozen bars only
/// every n-th label is written under the axis.
pub fn stacked_bars(
    id: &str,
    title: &str,
    labels: &[String],
    series: &BTreeMap<String, Vec<i64>>,
    empty: &str,
) -> String {
    let (width, height) = (960.0_f64, 300.0_f64);
    let (left, right, top, bottom) = (70.0, 20.0, 36.0, 56.0);
    let plot_w = width - left - right;
    let plot_h = height - top - bottom;
    let totals: Vec<i64> = (0..labels.len())
        .map(|i| {
            series
                .values()
                .map(|v| v.get(i).copied().unwrap_or(0).max(0))
                .sum()
        })
        .collect();
    let top_value = axis_top(totals.iter().copied().max().unwrap_or(0));
    let y = |v: i64| top + plot_h - plot_h * (v as f64) / (top_value as f64);
    let mut svg = format!(
        r##"<svg id="{id}" role="img" aria-label="{title}" viewBox="0 0 {width} {height}" width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg" font-family="system-ui, sans-serif" font-size="12">
    <text x="{left}" y="20" font-size="14" font-weight="600" fill="#1d2433">{title}</text>"##,
        id = escape(id),
        title = escape(title),
    );
    for k in 0..=4 {
        let v = top_value * k / 4;
        let gy = y(v);
        let _ = write!(
            svg,
            r##"<line x1="{left}" y1="{gy:.1}" x2="{x2:.1}" y2="{gy:.1}" stroke="#e4e7ec"/><text x="{tx:.1}" y="{ty:.1}" text-anchor="end" fill="#5d6677">{v}</text>"##,
            x2 = left + plot_w,
            tx = left - 8.0,
            ty = gy + 4.0,
        );
    }
    let slot = plot_w / labels.len().max(1) as f64;
    // At most about a dozen axis labels, so they never overlap (every bar keeps its title).
    let label_every = labels.len().div_ceil(12).max(1);
    let bar = (slot * 0.6).min(48.0);
    for (i, label) in labels.iter().enumerate() {
        let x = left + slot * i as f64 + (slot - bar) / 2.0;
        let mut base = 0i64;
        for (s, (name, values)) in series.iter().enumerate() {
            let v = values.get(i).copied().unwrap_or(0).max(0);
            if v == 0 {
                continue;
            }
            let (y1, y0) = (y(base + v), y(base));
            let _ = write!(
                svg,
                r#"<rect x="{x:.1}" y="{y1:.1}" width="{bar:.1}" height="{h:.1}" fill="{c}"><title>{n}: {v} ({l})</title></rect>"#,
                h = (y0 - y1).max(0.5),
                c = COLOURS[s % COLOURS.len()],
                n = escape(name),
                l = escape(label),
            );
            base += v;
        }
        if i % label_every != 0 {
            continue;
        }
        let _ = write!(
            svg,
            r##"<text x="{cx:.1}" y="{ly:.1}" text-anchor="middle" fill="#5d6677">{l}</text>"##,
            cx = left + slot * i as f64 + slot / 2.0,
            ly = top + plot_h + 18.0,
            l = escape(label),
        );
    }
    let mut lx = left;
    for (s, name) in series.keys().enumerate() {
        let _ = write!(
            svg,
            r##"<rect x="{lx:.1}" y="{ry:.1}" width="12" height="12" fill="{c}"/><text x="{tx:.1}" y="{ty:.1}" fill="#1d2433">{n}</text>"##,
            ry = height - 22.0,
            c = COLOURS[s % COLOURS.len()],
            tx = lx + 17.0,
            ty = height - 12.0,
            n = escape(name),
        );
        lx += 30.0 + 7.5 * name.chars().count() as f64;
    }
    if series.is_empty() || totals.iter().all(|t| *t == 0) {
        let _ = write!(
            svg,
            r##"<text x="{cx:.1}" y="{cy:.1}" text-anchor="middle" fill="#5d6677">{e}</text>"##,
            cx = left + plot_w / 2.0,
            cy = top + plot_h / 2.0,
            e = escape(empty),
        );
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_axis_rounds_up_and_markup_is_escaped() {
        assert_eq!(axis_top(0), 1);
        assert_eq!(axis_top(7), 10);
        assert_eq!(axis_top(140), 200);
        assert_eq!(axis_top(401), 500);
        let series = BTreeMap::from([
            ("<crm>".to_owned(), vec![35, 0]),
            ("hrms".to_owned(), vec![10, 5]),
        ]);
        let svg = stacked_bars("c", "T & C", &["a".into(), "b".into()], &series, "none");
        assert!(svg.contains("&lt;crm&gt;: 35 (a)"));
        assert!(svg.contains("T &amp; C"));
        assert_eq!(
            svg.matches("<rect").count(),
            3 + 2,
            "three segments, two legend keys"
        );
        assert!(!svg.contains("<crm>"));
    }

    #[test]
    fn many_bars_keep_a_dozen_axis_labels() {
        let labels: Vec<String> = (0..60).map(|i| format!("m{i}")).collect();
        let series = BTreeMap::from([("lag".to_owned(), vec![1; 60])]);
        let svg = stacked_bars("c", "t", &labels, &series, "none");
        let axis_labels = svg
            .matches(r##"text-anchor="middle" fill="#5d6677">m"##)
            .count();
        assert_eq!(axis_labels, 12, "every fifth of 60");
        assert_eq!(
            svg.matches("<title>lag: 1 (m").count(),
            60,
            "every bar titled"
        );
    }
}
