//! `ringlb bench merge`: one latency distribution from several `ringlb bench ... --json` reports,
//! so that the percentiles of many short runs (rounds of a benchmark) can be read as one.
//!
//! Owns: reading reports from files (one JSON object per file as `--json` prints it, or several
//! one after another as a script appends them), checking that each is a bench report of the same
//! mode that carries a latency histogram, adding the histograms, and printing the result (a table,
//! or JSON that `bench merge` reads back like a report). Does not own measuring or the
//! histogram's text form ([`super::report`]).
//!
//! Merging histograms, unlike averaging or taking the median of each run's p99, weighs every
//! request the same: the merged p99 is the p99 of all requests of all runs.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::Value;

use super::report::{Percentiles, decode_histogram, encode_histogram, histogram};

/// Options of `bench merge`.
#[derive(Debug, Clone, clap::Args)]
pub struct MergeArgs {
    /// Files with the output of `ringlb bench ... --json` (or of `bench merge --json`): one report
    /// each, or several one after another (one per line).
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// The merged latency distribution, as printed with `--json`.
#[derive(Clone, Debug, Serialize)]
pub struct Merged {
    /// The mode of every merged report ("rr", "udp", ...).
    pub mode: String,
    /// How many reports were merged.
    pub reports: usize,
    /// Percentiles of the merged histogram, microseconds; `count` is every latency of every report.
    pub latency_us: Option<Percentiles>,
    /// The merged histogram in the reports' own text form, so that merges merge again.
    pub latency_histogram: String,
}

/// Adds reports' latency histograms, each named by `label` in errors.
#[derive(Debug)]
pub struct Merger {
    mode: Option<String>,
    reports: usize,
    sum: Histogram<u64>,
}

impl Default for Merger {
    fn default() -> Self {
        Merger {
            mode: None,
            reports: 0,
            sum: histogram(),
        }
    }
}

impl Merger {
    /// Adds one report; an error (naming `label`) when it is not a bench report, has no
    /// histogram, or is of another mode than the reports before it.
    pub fn add(&mut self, label: &str, report: &Value) -> anyhow::Result<()> {
        let mode = report
            .get("mode")
            .and_then(Value::as_str)
            .filter(|_| report.get("latency_us").is_some())
            .with_context(|| {
                format!("{label}: not a `ringlb bench ... --json` report (no mode and latency_us)")
            })?;
        let text = match report.get("latency_histogram") {
            Some(Value::String(text)) => text,
            Some(Value::Null) => bail!(
                "{label}: a {mode} report without a latency histogram (it measured no latency)"
            ),
            Some(_) => bail!("{label}: latency_histogram is not a string"),
            None => bail!(
                "{label}: a {mode} report without a latency histogram (made by a ringlb bench \
                 that did not write one)"
            ),
        };
        if let Some(first) = &self.mode
            && first != mode
        {
            bail!("{label}: a {mode} report; the reports before it are {first}");
        }
        let h = decode_histogram(text).with_context(|| format!("{label}: latency_histogram"))?;
        self.sum
            .add(&h)
            .map_err(|e| anyhow::anyhow!("{label}: cannot add its histogram: {e:?}"))?;
        self.mode = Some(mode.to_string());
        self.reports += 1;
        Ok(())
    }

    /// Adds every report in the file at `path`.
    pub fn add_file(&mut self, path: &Path) -> anyhow::Result<()> {
        let name = path.display();
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {name}"))?;
        let mut found = 0;
        for (i, report) in serde_json::Deserializer::from_str(&text)
            .into_iter::<Value>()
            .enumerate()
        {
            let report = report.with_context(|| {
                format!("{name}: not JSON, so not a `ringlb bench ... --json` report")
            })?;
            self.add(&format!("{name} (report {})", i + 1), &report)?;
            found += 1;
        }
        if found == 0 {
            bail!("{name}: empty, no `ringlb bench ... --json` report in it");
        }
        Ok(())
    }

    /// The merged distribution; an error when no report was added.
    pub fn finish(self) -> anyhow::Result<Merged> {
        let mode = self.mode.context("no report to merge")?;
        Ok(Merged {
            mode,
            reports: self.reports,
            latency_us: Percentiles::of(&self.sum),
            latency_histogram: encode_histogram(&self.sum),
        })
    }
}

impl Merged {
    /// The human-readable table.
    pub fn table(&self) -> String {
        let count = self.latency_us.as_ref().map_or(0, |p| p.count);
        let mut s = format!(
            "ringlb bench merge: {} {} reports, {count} latencies\n\n",
            self.reports, self.mode
        );
        s += &format!(
            "  {:<12} {:>9} {:>9} {:>9} {:>9} {:>9}\n",
            "latency (us)", "p50", "p99", "p99.9", "max", "mean"
        );
        s += &match &self.latency_us {
            Some(p) => format!(
                "  {:<12} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1}\n",
                "merged", p.p50, p.p99, p.p999, p.max, p.mean
            ),
            None => format!("  {:<12} {:>9}\n", "merged", "-"),
        };
        s
    }
}

/// Runs `bench merge` and prints the result on stdout.
pub fn run(args: &MergeArgs) -> anyhow::Result<()> {
    let mut merger = Merger::default();
    for path in &args.files {
        merger.add_file(path)?;
    }
    let merged = merger.finish()?;
    if args.json {
        println!("{}", serde_json::to_string(&merged)?);
    } else {
        print!("{}", merged.table());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::time::Duration;

    use serde_json::json;

    use super::*;
    use crate::loadtool::report::record;

    /// A report as `--json` writes it, reduced to what merging reads.
    fn report(mode: &str, h: &Histogram<u64>) -> Value {
        json!({
            "mode": mode,
            "requests": h.len(),
            "latency_us": Percentiles::of(h),
            "latency_histogram": encode_histogram(h),
        })
    }

    fn of(latencies_us: &[u64]) -> Histogram<u64> {
        let mut h = histogram();
        for &us in latencies_us {
            record(&mut h, Duration::from_micros(us));
        }
        h
    }

    /// The `q` quantile of `sorted`, in microseconds (nearest rank, as HdrHistogram counts).
    fn exact(sorted: &[u64], q: f64) -> f64 {
        let rank = ((q * sorted.len() as f64).ceil() as usize).max(1);
        sorted[rank - 1] as f64
    }

    #[test]
    fn merged_percentiles_are_those_of_all_latencies_together() {
        // Two runs of different sizes and spreads: a fast one and a slow one with a tail.
        let a: Vec<u64> = (1..=1000).map(|i| 20 + i * 7 % 400).collect();
        let b: Vec<u64> = (1..=300).map(|i| 300 + i * i / 10).collect();
        let mut merger = Merger::default();
        merger.add("a", &report("rr", &of(&a))).unwrap();
        merger.add("b", &report("rr", &of(&b))).unwrap();
        let merged = merger.finish().unwrap();
        assert_eq!(merged.reports, 2);
        assert_eq!(merged.mode, "rr");

        let mut all = [a, b].concat();
        let direct = Percentiles::of(&of(&all)).unwrap();
        let p = merged.latency_us.clone().unwrap();
        assert_eq!(p.count, all.len() as u64);
        assert_eq!(
            (p.p50, p.p90, p.p99, p.p999, p.max, p.mean),
            (
                direct.p50,
                direct.p90,
                direct.p99,
                direct.p999,
                direct.max,
                direct.mean
            )
        );
        // And within the histogram's precision (3 significant digits) of the exact values.
        all.sort_unstable();
        for (got, q) in [(p.p50, 0.5), (p.p99, 0.99), (p.p999, 0.999), (p.max, 1.0)] {
            let want = exact(&all, q);
            assert!(
                (got - want).abs() <= want * 0.001 + 0.1,
                "quantile {q}: merged {got} us, exact {want} us"
            );
        }
        // The merged histogram merges again, to the same distribution doubled.
        let again = serde_json::to_value(&merged).unwrap();
        let mut twice = Merger::default();
        twice.add("m1", &again).unwrap();
        twice.add("m2", &again).unwrap();
        let twice = twice.finish().unwrap().latency_us.unwrap();
        assert_eq!(twice.count, 2 * p.count);
        assert_eq!((twice.p50, twice.p99), (p.p50, p.p99));
    }

    #[test]
    fn refuses_what_is_not_a_report_with_a_histogram() {
        let h = of(&[10, 20, 30]);
        let err = |v: Value| {
            let mut m = Merger::default();
            m.add("r.json", &report("rr", &h)).unwrap();
            format!("{:#}", m.add("x.json", &v).unwrap_err())
        };
        let e = err(json!({"name": "something else"}));
        assert!(e.contains("x.json: not a `ringlb bench"), "{e}");
        let e = err(json!([1, 2]));
        assert!(e.contains("not a `ringlb bench"), "{e}");
        let mut stream = report("stream", &h);
        stream["latency_histogram"] = Value::Null;
        assert!(err(stream).contains("without a latency histogram"));
        let mut old = report("rr", &h);
        old.as_object_mut().unwrap().remove("latency_histogram");
        assert!(err(old).contains("without a latency histogram"));
        let mut broken = report("rr", &h);
        broken["latency_histogram"] = json!("AAAA");
        assert!(err(broken).contains("latency_histogram"));
        let e = err(report("udp", &h));
        assert!(
            e.contains("a udp report; the reports before it are rr"),
            "{e}"
        );
        assert!(Merger::default().finish().is_err());
    }

    #[test]
    fn files_hold_one_report_or_several_in_a_row() {
        let (a, b) = (of(&[5, 6, 7]), of(&[100, 200]));
        let mut lines = tempfile::NamedTempFile::new().unwrap();
        writeln!(lines, "{}", report("rr", &a)).unwrap();
        writeln!(lines, "{}", report("rr", &b)).unwrap();
        let mut one = tempfile::NamedTempFile::new().unwrap();
        write!(one, "{}", report("rr", &b)).unwrap();
        let mut m = Merger::default();
        m.add_file(lines.path()).unwrap();
        m.add_file(one.path()).unwrap();
        let merged = m.finish().unwrap();
        assert_eq!(merged.reports, 3);
        assert_eq!(
            merged.latency_us.unwrap().count,
            a.len() + 2 * b.len(),
            "every latency of every report"
        );

        let mut text = tempfile::NamedTempFile::new().unwrap();
        write!(text, "requests 1000").unwrap();
        let e = format!("{:#}", Merger::default().add_file(text.path()).unwrap_err());
        assert!(e.contains("not JSON"), "{e}");
        let empty = tempfile::NamedTempFile::new().unwrap();
        let e = format!(
            "{:#}",
            Merger::default().add_file(empty.path()).unwrap_err()
        );
        assert!(e.contains("empty"), "{e}");
    }
}
