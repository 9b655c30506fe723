//! Reading Prometheus's text exposition format, just enough for the
//! scenarios: each sample line as its series name, its labels and its
//! value (comments and unreadable lines skipped).

/// One sample line: `name{label="value",...} 1.5`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample<'a> {
    /// The series name, `_total`, `_bucket`... suffixes included.
    pub name: &'a str,
    labels: &'a str,
    /// The value.
    pub value: f64,
}

impl Sample<'_> {
    /// The value of the label `key`, if the sample has it.
    pub fn label(&self, key: &str) -> Option<String> {
        self.labels
            .split(',')
            .filter_map(|pair| pair.split_once('='))
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.trim_matches('"').to_owned())
    }
}

/// Every sample of an exposition, in order.
pub fn samples(text: &str) -> impl Iterator<Item = Sample<'_>> {
    text.lines().filter_map(|line| {
        if line.starts_with('#') {
            return None;
        }
        let (series, value) = line.rsplit_once(' ')?;
        let value = value.parse::<f64>().ok()?;
        let (name, labels) = series
            .split_once('{')
            .map_or((series, ""), |(n, l)| (n, l.trim_end_matches('}')));
        Some(Sample {
            name,
            labels,
            value,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_read_with_their_labels() {
        let text = "# HELP x X\nx_total{worker=\"worker-1\",outcome=\"ok\"} 3\nbad line\ny 2.5\n";
        let read: Vec<_> = samples(text).collect();
        assert_eq!(read.len(), 2);
        assert_eq!((read[0].name, read[0].value), ("x_total", 3.0));
        assert_eq!(read[0].label("worker").as_deref(), Some("worker-1"));
        assert_eq!(read[0].label("outcome").as_deref(), Some("ok"));
        assert_eq!(read[0].label("le"), None);
        assert_eq!((read[1].name, read[1].value), ("y", 2.5));
    }
}
