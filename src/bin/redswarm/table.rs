//! Aligned text tables and human-readable figures for the tool's output.

use std::fmt::Write as _;

/// A table printed with its columns aligned: numbers (and `-`) to the
/// right, text to the left, two spaces between columns.
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&str]) -> Table {
        Table {
            headers: headers.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table as text, or a one-line note when it has no rows.
    pub fn render(&self, empty: &str) -> String {
        if self.rows.is_empty() {
            return format!("{empty}\n");
        }
        let cols = self.headers.len();
        let cell = |row: &Vec<String>, i: usize| row.get(i).cloned().unwrap_or_default();
        let width: Vec<usize> = (0..cols)
            .map(|i| {
                self.rows
                    .iter()
                    .map(|r| cell(r, i).chars().count())
                    .chain([self.headers[i].chars().count()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let numeric: Vec<bool> = (0..cols)
            .map(|i| self.rows.iter().all(|r| is_numeric(&cell(r, i))))
            .collect();
        let mut out = String::new();
        let mut line = |cells: Vec<String>| {
            let mut text = String::new();
            for (i, c) in cells.iter().enumerate() {
                let pad = width[i].saturating_sub(c.chars().count());
                if i > 0 {
                    text.push_str("  ");
                }
                if numeric[i] {
                    text.push_str(&" ".repeat(pad));
                    text.push_str(c);
                } else {
                    text.push_str(c);
                    if i + 1 < cols {
                        text.push_str(&" ".repeat(pad));
                    }
                }
            }
            let _ = writeln!(out, "{}", text.trim_end());
        };
        line(self.headers.clone());
        for r in &self.rows {
            line((0..cols).map(|i| cell(r, i)).collect());
        }
        out
    }
}

fn is_numeric(s: &str) -> bool {
    s == "-"
        || s.parse::<f64>().is_ok()
        || (s.len() > 1
            && s.ends_with(['s', 'm', 'h', 'd'])
            && s.starts_with(|c: char| c.is_ascii_digit() || c == '-'))
}

/// A duration in ms for people: `850ms`, `12.3s`, `4m05s`, `2h07m`, `3d04h`;
/// negative values keep their sign.
pub fn duration(ms: i64) -> String {
    let sign = if ms < 0 { "-" } else { "" };
    let ms = ms.unsigned_abs();
    let s = ms / 1000;
    let text = if ms < 1000 {
        format!("{ms}ms")
    } else if s < 60 {
        format!("{}.{}s", s, (ms % 1000) / 100)
    } else if s < 3600 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else if s < 86_400 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else {
        format!("{}d{:02}h", s / 86_400, (s % 86_400) / 3600)
    };
    format!("{sign}{text}")
}

/// How long before `now` the time `at` was (both ms): `12.3s ago`.
pub fn ago(at: u64, now: u64) -> String {
    format!(
        "{} ago",
        duration(i64::try_from(now.saturating_sub(at)).unwrap_or(i64::MAX))
    )
}

/// `Some(x)` as text, `None` as `-`.
pub fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

/// `s` on one line, cut to `max` characters (with `…`).
pub fn short(s: &str, max: usize) -> String {
    let one_line: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if one_line.chars().count() <= max {
        one_line
    } else {
        let mut cut: String = one_line.chars().take(max.saturating_sub(1)).collect();
        cut.push('…');
        cut
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_numbers_right_and_text_left() {
        let mut t = Table::new(&["NAME", "READY"]);
        t.row(vec!["a".into(), "5".into()]);
        t.row(vec!["long-name".into(), "12".into()]);
        assert_eq!(
            t.render("none"),
            "NAME       READY\na              5\nlong-name     12\n"
        );
        assert_eq!(Table::new(&["X"]).render("no rows"), "no rows\n");
    }

    #[test]
    fn figures_read_well() {
        assert_eq!(duration(850), "850ms");
        assert_eq!(duration(12_345), "12.3s");
        assert_eq!(duration(245_000), "4m05s");
        assert_eq!(duration(7_620_000), "2h07m");
        assert_eq!(duration(-1500), "-1.5s");
        assert_eq!(duration(3 * 86_400_000 + 4 * 3_600_000), "3d04h");
        assert_eq!(ago(1000, 3500), "2.5s ago");
        assert_eq!(short("a\nb", 10), "a b");
        assert_eq!(short("abcdef", 4), "abc…");
        assert_eq!(opt(None::<u8>), "-");
    }
}
