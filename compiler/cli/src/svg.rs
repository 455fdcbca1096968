//! Minimal SVG charts for `veil bench` (no plotting dependency): horizontal stacked bars.

use std::fmt::Write as _;

/// Colours for the stacked segments, in order.
const PALETTE: [&str; 10] = [
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
    "#9c755f", "#bab0ac",
];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// One horizontal bar per row, each split into `segments` (values in the same unit, in the
/// order of `keys`), with a legend; `unit` labels the totals (values are divided by `scale`).
pub fn stacked_bars(
    title: &str,
    keys: &[String],
    rows: &[(String, Vec<f64>)],
    scale: f64,
    unit: &str,
) -> String {
    let (label_w, bar_w, row_h, top) = (300.0, 560.0, 28.0, 48.0);
    let legend_h = 22.0 * keys.len().div_ceil(5) as f64;
    let height = top + row_h * rows.len() as f64 + 30.0 + legend_h;
    let width = label_w + bar_w + 110.0;
    let max = rows.iter().map(|(_, v)| v.iter().sum::<f64>()).fold(0.0, f64::max).max(1e-9);
    let mut s = String::new();
    let _ = write!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"10\" y=\"24\" font-size=\"15\" font-weight=\"bold\">{}</text>\n",
        esc(title)
    );
    for (i, (label, vals)) in rows.iter().enumerate() {
        let y = top + row_h * i as f64;
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>",
            label_w - 8.0,
            y + row_h * 0.6,
            esc(label)
        );
        let mut x = label_w;
        for (k, v) in vals.iter().enumerate() {
            let w = bar_w * v / max;
            if w > 0.0 {
                let _ = writeln!(
                    s,
                    "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{w:.1}\" height=\"{:.1}\" fill=\"{}\"><title>{}: {:.1} {unit}</title></rect>",
                    y + 4.0,
                    row_h - 8.0,
                    PALETTE[k % PALETTE.len()],
                    esc(&keys[k]),
                    v / scale
                );
            }
            x += w;
        }
        let total: f64 = vals.iter().sum();
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\">{:.1} {unit}</text>",
            x + 6.0,
            y + row_h * 0.6,
            total / scale
        );
    }
    let ly = top + row_h * rows.len() as f64 + 20.0;
    for (k, key) in keys.iter().enumerate() {
        let (col, line) = (k % 5, k / 5);
        let x = 10.0 + 190.0 * col as f64;
        let y = ly + 22.0 * line as f64;
        let _ = writeln!(
            s,
            "<rect x=\"{x}\" y=\"{}\" width=\"12\" height=\"12\" fill=\"{}\"/><text x=\"{}\" y=\"{}\">{}</text>",
            y - 10.0,
            PALETTE[k % PALETTE.len()],
            x + 16.0,
            y,
            esc(key)
        );
    }
    s.push_str("</svg>\n");
    s
}

/// A line chart of `series` (name, points (x, y)), axes from zero, with a legend.
pub fn lines(
    title: &str,
    xlabel: &str,
    ylabel: &str,
    series: &[(String, Vec<(f64, f64)>)],
) -> String {
    let (left, top, w, h) = (70.0, 48.0, 560.0, 300.0);
    let pts = series.iter().flat_map(|(_, v)| v.iter());
    let xmax = pts.clone().map(|p| p.0).fold(0.0, f64::max).max(1e-9);
    let ymax = pts.map(|p| p.1).fold(0.0, f64::max).max(1e-9) * 1.1;
    let x = |v: f64| left + w * v / xmax;
    let y = |v: f64| top + h - h * v / ymax;
    let mut s = String::new();
    let _ = write!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"10\" y=\"24\" font-size=\"15\" font-weight=\"bold\">{}</text>\n",
        left + w + 180.0,
        top + h + 60.0,
        esc(title)
    );
    let _ = writeln!(
        s,
        "<line x1=\"{left}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/><line x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{}\" stroke=\"black\"/>",
        top + h,
        left + w,
        top + h,
        top + h
    );
    for k in 0..=4 {
        let v = ymax * k as f64 / 4.0;
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{v:.1}</text>",
            left - 6.0,
            y(v) + 4.0
        );
    }
    let xs: std::collections::BTreeSet<u64> =
        series.iter().flat_map(|(_, v)| v.iter().map(|p| p.0.to_bits())).collect();
    for b in xs {
        let v = f64::from_bits(b);
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{v}</text>",
            x(v),
            top + h + 16.0
        );
    }
    let _ = writeln!(
        s,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
        left + w / 2.0,
        top + h + 36.0,
        esc(xlabel)
    );
    let _ = writeln!(
        s,
        "<text x=\"16\" y=\"{}\" transform=\"rotate(-90 16 {})\" text-anchor=\"middle\">{}</text>",
        top + h / 2.0,
        top + h / 2.0,
        esc(ylabel)
    );
    for (i, (name, v)) in series.iter().enumerate() {
        let c = PALETTE[i % PALETTE.len()];
        let path: Vec<String> = v.iter().map(|p| format!("{:.1},{:.1}", x(p.0), y(p.1))).collect();
        let _ = writeln!(
            s,
            "<polyline points=\"{}\" fill=\"none\" stroke=\"{c}\" stroke-width=\"2\"/>",
            path.join(" ")
        );
        for p in v {
            let _ = writeln!(
                s,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{c}\"/>",
                x(p.0),
                y(p.1)
            );
        }
        let ly = top + 20.0 * i as f64;
        let _ = writeln!(s, "<rect x=\"{}\" y=\"{}\" width=\"12\" height=\"12\" fill=\"{c}\"/><text x=\"{}\" y=\"{}\">{}</text>", left + w + 20.0, ly, left + w + 38.0, ly + 10.0, esc(name));
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn bars_are_proportional_and_labelled() {
        let keys = vec!["gelu".to_string(), "a<b".to_string()];
        let rows = vec![("x".to_string(), vec![30e6, 10e6]), ("y".to_string(), vec![20e6, 0.0])];
        let s = super::stacked_bars("t", &keys, &rows, 1e6, "MB");
        assert!(s.starts_with("<svg") && s.trim_end().ends_with("</svg>"));
        // The longest bar spans the full width; segments scale with their values.
        assert!(s.contains("width=\"420.0\""), "{s}");
        assert!(s.contains("width=\"140.0\""), "{s}");
        assert!(s.contains("40.0 MB") && s.contains("20.0 MB"));
        assert!(s.contains("a&lt;b"));
    }
}
