//! Reading a Prometheus text exposition (a `/metrics` body) in tests, with
//! a real text-format parser.

use prometheus_parse::{Scrape, Value};

/// Parses a `/metrics` body; panics when it is not Prometheus text.
pub fn parse_metrics(text: &str) -> Scrape {
    let lines = text.lines().map(|line| Ok(line.to_owned()));
    Scrape::parse(lines).unwrap_or_else(|err| panic!("the metrics do not parse ({err}):\n{text}"))
}

/// The value of the one sample of `metric` whose labels include `labels`;
/// panics unless there is exactly one, or when it is not a single value.
pub fn metric_value(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<f64> = scrape
        .samples
        .iter()
        .filter(|sample| sample.metric == metric)
        .filter(|sample| {
            labels
                .iter()
                .all(|(name, value)| sample.labels.get(name) == Some(value))
        })
        .map(|sample| match sample.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
            _ => panic!("{metric} is not a single value"),
        })
        .collect();
    assert_eq!(found.len(), 1, "one {metric} with {labels:?}: {found:?}");
    found[0]
}
