//! What every scenario hands back: a JSON object (written with `--json`) and table rows (printed
//! at the end of a run), plus the progress display shown on stderr while a scenario runs.
//!
//! A row pairs a Chorus figure with the raw baseline measured in the same run, when there is one,
//! and their ratio, so the table reads as "how close Chorus comes to the machine's limits".

use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::Duration;

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};

/// One scenario's outcome.
pub struct Report {
    pub scenario: String,
    pub json: Value,
    pub rows: Vec<Row>,
}

/// One line of the table: a figure, and the raw baseline it is compared with.
pub struct Row {
    pub metric: String,
    pub chorus: f64,
    pub unit: &'static str,
    /// The raw baseline's figure for the same metric, measured in the same run.
    pub raw: Option<f64>,
}

impl Row {
    pub fn new(metric: impl Into<String>, chorus: f64, unit: &'static str) -> Self {
        Row {
            metric: metric.into(),
            chorus,
            unit,
            raw: None,
        }
    }

    /// The raw baseline measured in the same run.
    pub fn against(mut self, raw: f64) -> Self {
        self.raw = Some(raw);
        self
    }

    /// Chorus's figure over the raw baseline's.
    pub fn ratio(&self) -> Option<f64> {
        self.raw
            .filter(|raw| *raw > 0.0)
            .map(|raw| self.chorus / raw)
    }
}

/// Rows of `figures` (metric, value, unit), each against the figure at the same place of
/// `baseline` when there is one.
pub fn rows_against<const N: usize>(
    figures: [(&'static str, f64, &'static str); N],
    baseline: Option<[(&'static str, f64, &'static str); N]>,
) -> Vec<Row> {
    figures
        .into_iter()
        .enumerate()
        .map(|(index, (metric, value, unit))| {
            let row = Row::new(metric, value, unit);
            match &baseline {
                Some(baseline) => row.against(baseline[index].1),
                None => row,
            }
        })
        .collect()
}

/// Formats a figure for the table: thousands separated, at most two decimals for small values.
pub fn figure(value: f64) -> String {
    if value.abs() >= 100.0 {
        let whole = format!("{:.0}", value.abs());
        let mut grouped = String::new();
        for (index, digit) in whole.chars().enumerate() {
            if index > 0 && (whole.len() - index).is_multiple_of(3) {
                grouped.push(',');
            }
            grouped.push(digit);
        }
        if value < 0.0 {
            format!("-{grouped}")
        } else {
            grouped
        }
    } else {
        format!("{value:.2}")
    }
}

/// Prints every report's rows as one table on stdout.
pub fn print_table(reports: &[Report]) {
    let mut lines = vec![[
        "scenario".to_owned(),
        "metric".to_owned(),
        "chorus".to_owned(),
        "raw baseline".to_owned(),
        "ratio".to_owned(),
    ]];
    for report in reports {
        for row in &report.rows {
            let unit = |value: f64| format!("{} {}", figure(value), row.unit);
            lines.push([
                report.scenario.clone(),
                row.metric.clone(),
                unit(row.chorus),
                row.raw.map(unit).unwrap_or_default(),
                row.ratio()
                    .map(|ratio| format!("{ratio:.3}"))
                    .unwrap_or_default(),
            ]);
        }
    }
    let mut widths = [0usize; 5];
    for line in &lines {
        for (width, cell) in widths.iter_mut().zip(line) {
            *width = (*width).max(cell.chars().count());
        }
    }
    for (index, line) in lines.iter().enumerate() {
        let cells: Vec<String> = line
            .iter()
            .zip(widths)
            .enumerate()
            .map(|(column, (cell, width))| {
                if column >= 2 {
                    format!("{cell:>width$}")
                } else {
                    format!("{cell:<width$}")
                }
            })
            .collect();
        println!("{}", cells.join("  "));
        if index == 0 {
            let rule: Vec<String> = widths.iter().map(|width| "-".repeat(*width)).collect();
            println!("{}", rule.join("  "));
        }
    }
}

/// The JSON document of a run: every report under its scenario name, in order.
pub fn to_json(reports: &[Report]) -> Value {
    Value::Array(
        reports
            .iter()
            .map(|report| {
                let mut value = report.json.clone();
                if let Value::Object(object) = &mut value {
                    object.insert("scenario".into(), json!(report.scenario));
                }
                value
            })
            .collect(),
    )
}

/// A progress bar on stderr (hidden when stderr is not a terminal, so logs stay clean): `total`
/// steps, or a spinner when the total is unknown.
pub fn progress(label: &str, total: Option<u64>) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = match total {
        Some(total) => ProgressBar::new(total).with_style(
            ProgressStyle::with_template(
                "{prefix:>12} [{bar:30}] {human_pos}/{human_len} {per_sec} {msg} ({elapsed})",
            )
            .expect("valid template")
            .progress_chars("=> "),
        ),
        None => ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template(
                "{prefix:>12} {spinner} {human_pos} {per_sec} {msg} ({elapsed})",
            )
            .expect("valid template"),
        ),
    };
    bar.set_prefix(label.to_owned());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// An HDR histogram of microseconds, 1 µs to 60 s, three significant digits.
pub fn micros_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

/// Milliseconds at the usual quantiles of a histogram of microseconds.
pub fn summary(histogram: &Histogram<u64>) -> Value {
    let millis = |quantile: f64| histogram.value_at_quantile(quantile) as f64 / 1000.0;
    json!({"count": histogram.len(), "p50_ms": millis(0.5), "p99_ms": millis(0.99),
           "p999_ms": millis(0.999), "max_ms": histogram.max() as f64 / 1000.0})
}

/// Quantile of a histogram of microseconds, in milliseconds.
pub fn millis(histogram: &Histogram<u64>, quantile: f64) -> f64 {
    histogram.value_at_quantile(quantile) as f64 / 1000.0
}

/// What sessions record, merged at the end of a traffic scenario.
pub struct Recorder {
    pub ack_micros: Histogram<u64>,
    pub delivery_micros: Histogram<u64>,
    pub errors: HashMap<String, u64>,
    /// Sends made (acked or not).
    pub sent: u64,
    pub acked: u64,
    pub delivered: u64,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            ack_micros: micros_histogram(),
            delivery_micros: micros_histogram(),
            errors: HashMap::new(),
            sent: 0,
            acked: 0,
            delivered: 0,
        }
    }
}

impl Recorder {
    pub fn merge(&mut self, other: Recorder) -> anyhow::Result<()> {
        self.ack_micros.add(&other.ack_micros)?;
        self.delivery_micros.add(&other.delivery_micros)?;
        self.sent += other.sent;
        self.acked += other.acked;
        self.delivered += other.delivered;
        for (code, count) in other.errors {
            *self.errors.entry(code).or_default() += count;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_group_thousands_and_keep_small_decimals() {
        assert_eq!(figure(1_234_567.4), "1,234,567");
        assert_eq!(figure(100.0), "100");
        assert_eq!(figure(-12_345.0), "-12,345");
        assert_eq!(figure(7.254), "7.25");
    }

    #[test]
    fn ratio_is_chorus_over_raw_and_absent_without_a_baseline() {
        assert_eq!(Row::new("x", 30.0, "/s").against(120.0).ratio(), Some(0.25));
        assert_eq!(Row::new("x", 30.0, "/s").ratio(), None);
        assert_eq!(Row::new("x", 30.0, "/s").against(0.0).ratio(), None);
    }
}
