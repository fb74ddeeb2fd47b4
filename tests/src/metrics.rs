//! Reads a gateway's `GET /metrics`: a small parser of the Prometheus text format (the
//! sample lines; `# HELP` and `# TYPE` are skipped), enough for tests to ask "what is this
//! series now" and "which label values are there".

use std::collections::BTreeMap;

/// One sample line: `name{label="value",…} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The metric name, with its `_total`, `_bucket`, `_count`… suffix.
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its value.
    pub value: f64,
}

/// Every sample of one scrape, and the text it came from.
#[derive(Debug, Clone)]
pub struct Scrape {
    /// The exposition as served.
    pub text: String,
    /// Its samples, in order.
    pub samples: Vec<Sample>,
}

impl Scrape {
    /// Parses an exposition in the Prometheus text format.
    pub fn parse(text: &str) -> Result<Scrape, String> {
        let samples = text
            .lines()
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .map(|line| parse_sample(line).ok_or_else(|| format!("not a sample line: {line:?}")))
            .collect::<Result<_, _>>()?;
        Ok(Scrape {
            text: text.to_owned(),
            samples,
        })
    }

    /// The samples named `name` whose labels include every pair of `labels`.
    pub fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&str, &str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).is_some_and(|have| have == v))
        })
    }

    /// The value of the one sample named `name` with exactly `labels`; `None` if there is
    /// no such series (a series never used is not listed).
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.matching(name, labels)
            .find(|s| s.labels.len() == labels.len())
            .map(|s| s.value)
    }

    /// [`Scrape::get`], with a missing series read as 0.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or(0.0)
    }

    /// The sum over every sample named `name` whose labels include `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|s| s.value).sum()
    }

    /// Every label value of every sample.
    pub fn label_values(&self) -> impl Iterator<Item = &str> {
        self.samples
            .iter()
            .flat_map(|s| s.labels.values().map(String::as_str))
    }
}

fn parse_sample(line: &str) -> Option<Sample> {
    let (series, value) = line.rsplit_once(' ')?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    let (name, labels) = match series.split_once('{') {
        None => (series, BTreeMap::new()),
        Some((name, rest)) => (name, parse_labels(rest.strip_suffix('}')?)?),
    };
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// `k="v",k2="v2"` (values escaped with `\\`, `\"` and `\n`).
fn parse_labels(mut rest: &str) -> Option<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (_, c) => value.push(c),
            }
        };
        labels.insert(key.trim_start_matches(',').to_owned(), value);
        rest = &after[end + 1..];
    }
    Some(labels)
}

/// `GET url` (a `/metrics` URL): asserts a 200 in the Prometheus text format, and parses it.
pub async fn scrape(url: &str) -> Scrape {
    let reply = reqwest::get(url).await.expect("GET /metrics");
    assert_eq!(reply.status(), 200, "GET {url}");
    let content_type = reply
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "content type {content_type:?}"
    );
    let text = reply.text().await.expect("the metrics");
    Scrape::parse(&text).unwrap_or_else(|e| panic!("{e} in:\n{text}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_and_their_labels_are_read() {
        let text = "# HELP a_total A.\n# TYPE a_total counter\n\
                    a_total{route=\"x\",status=\"200\"} 3\n\
                    b 1.5\n\
                    h_bucket{le=\"+Inf\"} 2\n\
                    e{v=\"q\\\"uo,te\\\\\",w=\"\"} 0\n";
        let scrape = Scrape::parse(text).unwrap();
        assert_eq!(
            scrape.get("a_total", &[("route", "x"), ("status", "200")]),
            Some(3.0)
        );
        assert_eq!(
            scrape.get("a_total", &[("route", "x")]),
            None,
            "labels must match exactly"
        );
        assert_eq!(scrape.sum("a_total", &[("route", "x")]), 3.0);
        assert_eq!(scrape.get("b", &[]), Some(1.5));
        assert_eq!(scrape.get("h_bucket", &[("le", "+Inf")]), Some(2.0));
        assert_eq!(
            scrape.get("e", &[("v", "q\"uo,te\\"), ("w", "")]),
            Some(0.0)
        );
        assert!(Scrape::parse("nonsense\n").is_err());
    }
}
