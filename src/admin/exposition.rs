//! Building blocks of the Prometheus text exposition that `metrics` writes: metric families
//! of counters, gauges and histograms over label sets, encoded by prometheus-client.
//!
//! Owns: how one family and its samples are encoded. Does not own metric names, help texts or
//! where values come from (`metrics`).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam::utils::CachePadded;
use hdrhistogram::Histogram;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;

use crate::control::Counter;
use crate::control::histogram::cumulative;

pub(super) type Labels = Vec<(&'static str, String)>;

/// A metric family being written: its descriptor once, then one sample per label set.
pub(super) struct Family<'a> {
    encoder: prometheus_client::encoding::MetricEncoder<'a>,
    kind: MetricType,
}

impl<'a> Family<'a> {
    pub(super) fn new(
        encoder: &'a mut DescriptorEncoder<'_>,
        name: &'a str,
        help: &str,
        kind: MetricType,
    ) -> Result<Family<'a>, fmt::Error> {
        Ok(Family {
            encoder: encoder.encode_descriptor(name, help, None, kind)?,
            kind,
        })
    }

    pub(super) fn sample(&mut self, labels: &Labels, value: u64) -> fmt::Result {
        let mut e = self.encoder.encode_family(labels)?;
        match self.kind {
            MetricType::Counter => e.encode_counter::<NoLabelSet, u64, u64>(&value, None),
            _ => e.encode_gauge(&value),
        }
    }

    pub(super) fn gauge_f64(&mut self, labels: &Labels, value: f64) -> fmt::Result {
        self.encoder.encode_family(labels)?.encode_gauge(&value)
    }

    /// A histogram recorded in `unit` seconds (1e-6 for microseconds), with bucket `bounds`
    /// in seconds.
    pub(super) fn histogram(
        &mut self,
        labels: &Labels,
        histogram: Option<&Histogram<u64>>,
        unit: f64,
        bounds: &[f64],
    ) -> fmt::Result {
        let (sum, count, buckets) = match histogram {
            Some(h) => {
                let raw: Vec<u64> = bounds.iter().map(|b| (b / unit).round() as u64).collect();
                let cum = cumulative(h, &raw);
                let mut previous = 0;
                let buckets: Vec<(f64, u64)> = bounds
                    .iter()
                    .zip(cum)
                    .map(|(&b, c)| {
                        let in_bucket = c.saturating_sub(previous);
                        previous = c;
                        (b, in_bucket)
                    })
                    .collect();
                (h.mean() * h.len() as f64 * unit, h.len(), buckets)
            }
            None => (0.0, 0, bounds.iter().map(|&b| (b, 0)).collect()),
        };
        self.encoder
            .encode_family(labels)?
            .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }
}

/// One counter or gauge family over a list of (labels, value).
pub(super) fn family(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: &[(Labels, u64)],
) -> fmt::Result {
    if samples.is_empty() {
        return Ok(());
    }
    let mut f = Family::new(encoder, name, help, kind)?;
    for (labels, value) in samples {
        f.sample(labels, *value)?;
    }
    Ok(())
}

/// A value a sample is read from: a [`Counter`], or a gauge kept in an atomic. Read with a
/// relaxed load (the [`crate::control::counter`] docs say why that is enough for `/metrics`).
pub(super) trait Value {
    fn value(&self) -> u64;
}

impl Value for Counter {
    fn value(&self) -> u64 {
        self.get()
    }
}

impl Value for AtomicU64 {
    fn value(&self) -> u64 {
        self.load(Ordering::Relaxed)
    }
}

impl<T: Value> Value for CachePadded<T> {
    fn value(&self) -> u64 {
        (**self).value()
    }
}

/// The current value of a counter or gauge.
pub(super) fn load(a: &(impl Value + ?Sized)) -> u64 {
    a.value()
}
