//! Reading a service's `/metrics` answer (the Prometheus text format).
//!
//! Tests of one binary share one process-wide recorder, so a test reads
//! counters before and after what it does and expects them to have grown
//! by at least its own share; other tests can only add to them.

/// One scrape, as text.
#[derive(Debug, Clone)]
pub struct Scrape(String);

/// One sample line: its metric name, labels and value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Scrape {
    /// `GET <base>/metrics`, asserting a 200 in the text format.
    pub async fn of(http: &reqwest::Client, base: &str) -> Self {
        let response = http
            .get(format!("{base}/metrics"))
            .send()
            .await
            .expect("request sent");
        assert_eq!(response.status(), 200, "GET /metrics");
        assert_eq!(
            response.headers()["content-type"],
            "text/plain; version=0.0.4",
            "GET /metrics"
        );
        Self(response.text().await.expect("a text body"))
    }

    pub fn text(&self) -> &str {
        &self.0
    }

    /// Every sample of the scrape.
    pub fn samples(&self) -> Vec<Sample> {
        self.0
            .lines()
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .map(|line| parse_sample(line).unwrap_or_else(|| panic!("unreadable sample {line:?}")))
            .collect()
    }

    /// The sum of every series of `name` whose labels include `labels`;
    /// `None` when there is none.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let matching: Vec<f64> = self
            .samples()
            .into_iter()
            .filter(|sample| sample.name == name)
            .filter(|sample| {
                labels
                    .iter()
                    .all(|(key, value)| sample.labels.iter().any(|(k, v)| k == key && v == value))
            })
            .map(|sample| sample.value)
            .collect();
        (!matching.is_empty()).then(|| matching.iter().sum())
    }

    /// Like `sum`, but 0 when no series exists yet (a counter nothing
    /// incremented).
    pub fn count(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.sum(name, labels).unwrap_or(0.0)
    }

    /// Whether the scrape declares family `name` (a `# TYPE` line).
    pub fn declares(&self, name: &str, kind: &str) -> bool {
        self.0
            .lines()
            .any(|line| line == format!("# TYPE {name} {kind}"))
    }
}

/// `name{key="value",...} value`, or `name value`.
fn parse_sample(line: &str) -> Option<Sample> {
    let name_end = line.find(['{', ' '])?;
    let name = line[..name_end].to_owned();
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(inside) = rest.strip_prefix('{') {
        rest = inside;
        loop {
            if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            }
            let (key, after) = rest.split_once("=\"")?;
            let mut value = String::new();
            let mut chars = after.char_indices();
            let end = loop {
                match chars.next()? {
                    (i, '"') => break i,
                    (_, '\\') => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    (_, c) => value.push(c),
                }
            };
            labels.push((key.trim_start_matches(',').to_owned(), value));
            rest = &after[end + 1..];
        }
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        other => other.parse().ok()?,
    };
    Some(Sample {
        name,
        labels,
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_with_and_without_labels_are_read() {
        let scrape = Scrape(
            "# TYPE a counter\na{route=\"/books/{id}\",status=\"404\"} 3\na{route=\"/x\",status=\"404\"} 2\nb 1.5\nc_bucket{le=\"+Inf\"} 7\n"
                .to_owned(),
        );
        assert_eq!(scrape.sum("a", &[("status", "404")]), Some(5.0));
        assert_eq!(scrape.sum("a", &[("route", "/books/{id}")]), Some(3.0));
        assert_eq!(scrape.sum("b", &[]), Some(1.5));
        assert_eq!(scrape.sum("c_bucket", &[("le", "+Inf")]), Some(7.0));
        assert_eq!(scrape.sum("a", &[("route", "/nope")]), None);
        assert_eq!(scrape.count("d", &[]), 0.0);
        assert!(scrape.declares("a", "counter"));
    }

    #[test]
    fn escaped_label_values_are_unescaped() {
        let sample = parse_sample(r#"x{v="a\"b\\c"} 1"#).unwrap();
        assert_eq!(sample.labels, [("v".to_owned(), "a\"b\\c".to_owned())]);
    }
}
