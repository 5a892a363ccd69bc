//! The `/metrics` document: every figure the node keeps, typed as Prometheus reads it (a count
//! that only grows is a counter, a level is a gauge, a latency is a histogram), encoded by
//! `prometheus-client` in the OpenMetrics text format.
//!
//! The admin endpoint gathers the figures ([`Figures`]: plain numbers, taken from the cores at
//! the scrape) and this module writes them; nothing here reads a core or a shard.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::status::Histogram;

/// The content type of the document.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A counter's name (without the `_total` the encoder adds) and help.
pub type Name = (&'static str, &'static str);

/// A metric with one label: its name, the label's key, and a value per label value.
pub type Labeled<T> = (Name, &'static str, Vec<(String, T)>);

/// Everything one scrape shows.
#[derive(Debug, Default)]
pub struct Figures {
    pub counters: Vec<(Name, u64)>,
    pub labeled_counters: Vec<Labeled<u64>>,
    pub gauges: Vec<(Name, f64)>,
    pub labeled_gauges: Vec<Labeled<f64>>,
    /// Histograms in seconds.
    pub histograms: Vec<Labeled<Histogram>>,
}

impl Collector for Figures {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        for ((name, help), value) in &self.counters {
            let metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(*value).encode(metric)?;
        }
        for ((name, help), key, values) in &self.labeled_counters {
            let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (label, value) in values {
                let labels = [(*key, label.as_str())];
                ConstCounter::new(*value).encode(metric.encode_family(&labels)?)?;
            }
        }
        for ((name, help), value) in &self.gauges {
            let metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            ConstGauge::new(*value).encode(metric)?;
        }
        for ((name, help), key, values) in &self.labeled_gauges {
            let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (label, value) in values {
                let labels = [(*key, label.as_str())];
                ConstGauge::new(*value).encode(metric.encode_family(&labels)?)?;
            }
        }
        for ((name, help), key, values) in &self.histograms {
            let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
            for (label, histogram) in values {
                let labels = [(*key, label.as_str())];
                let mut buckets: Vec<(f64, u64)> = histogram
                    .bounds_seconds
                    .iter()
                    .copied()
                    .zip(histogram.counts.iter().copied())
                    .collect();
                // The bucket above the last bound is +Inf's.
                buckets.push((f64::MAX, histogram.counts.last().copied().unwrap_or(0)));
                if histogram.counts.len() != histogram.bounds_seconds.len() + 1 {
                    buckets = vec![(f64::MAX, histogram.count)];
                }
                metric
                    .encode_family(&labels)?
                    .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                        histogram.sum_seconds,
                        histogram.count,
                        &buckets,
                        None,
                    )?;
            }
        }
        Ok(())
    }
}

/// The document for `figures`.
pub fn render(figures: Figures) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(figures));
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, &registry).is_err() {
        // Writing to a String cannot fail; an encoder error would be a bug, and a scrape
        // must still get a document rather than a dropped connection.
        out = "# EOF\n".into();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_gauges_and_histograms_are_typed_as_prometheus_reads_them() {
        let figures = Figures {
            counters: vec![(("porcupine_deliveries", "messages accepted"), 7)],
            labeled_counters: vec![(
                ("porcupine_smtp_replies", "SMTP replies by code"),
                "code",
                vec![("250".into(), 3), ("550".into(), 1)],
            )],
            gauges: vec![(("porcupine_dead_nodes", "nodes declared dead"), 0.0)],
            labeled_gauges: vec![(
                ("porcupine_shard_poisoned", "1 if the shard stopped writing"),
                "shard",
                vec![("shard-0".into(), 1.0)],
            )],
            histograms: vec![(
                ("porcupine_shard_ack_seconds", "append to durable"),
                "shard",
                vec![(
                    "shard-0".into(),
                    Histogram {
                        bounds_seconds: vec![0.001, 0.01],
                        counts: vec![2, 1, 1],
                        sum_seconds: 0.5,
                        count: 4,
                    },
                )],
            )],
        };
        let text = render(figures);
        assert!(
            text.contains("# TYPE porcupine_deliveries counter\n"),
            "{text}"
        );
        assert!(text.contains("porcupine_deliveries_total 7\n"), "{text}");
        assert!(
            text.contains("porcupine_smtp_replies_total{code=\"550\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE porcupine_dead_nodes gauge\n"),
            "{text}"
        );
        assert!(
            text.contains("porcupine_shard_poisoned{shard=\"shard-0\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE porcupine_shard_ack_seconds histogram\n"),
            "{text}"
        );
        assert!(
            text.contains("porcupine_shard_ack_seconds_bucket{le=\"0.01\",shard=\"shard-0\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("porcupine_shard_ack_seconds_bucket{le=\"+Inf\",shard=\"shard-0\"} 4\n"),
            "{text}"
        );
        assert!(
            text.contains("porcupine_shard_ack_seconds_count{shard=\"shard-0\"} 4\n"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
