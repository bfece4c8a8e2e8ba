//! PromQL of the dashboard and the alerts (manifests/observability/) against what the binaries
//! export: each expression is parsed by a real PromQL parser (`promql-parser`), and every
//! metric it selects, every label it matches, groups by (`by`, `without`), joins on (`on`,
//! `ignoring`, `group_left`, `group_right`) or reads (`histogram_quantile`'s `le`) must be
//! in a `/metrics` scrape; an equality matcher's value must be one the scrape shows.
//!
//! Labels flow through the expression as Prometheus computes them, closely enough to tell a
//! misspelt or dropped label: an aggregation keeps its `by` labels (or drops its `without`
//! ones), `histogram_quantile` drops `le`, one-to-one matching `on(...)` keeps those labels.
//! A Grafana query is first made PromQL: `$__rate_interval`, `$__interval` and `$__range`
//! become `5m`, any other variable (inside a matcher's regex) `.*`, and
//! `label_values(selector, label)` becomes `group by (label) (selector)`.

use std::collections::{BTreeMap, BTreeSet};

use promql_parser::label::{MatchOp, Matcher};
use promql_parser::parser::{
    self, AggregateExpr, BinaryExpr, Call, Expr, LabelModifier, VectorMatchCardinality,
    VectorSelector,
};

/// The series a scrape exposes: label names and the values seen, by sample name
/// (`x_total`, `x_bucket`, ...), and the names of families that have no series yet (from
/// their `# TYPE` line, with the suffixes their type gives their samples).
#[derive(Debug, Default)]
pub struct Exported {
    pub series: BTreeMap<String, BTreeMap<String, BTreeSet<String>>>,
    pub declared: BTreeSet<String>,
}

impl Exported {
    /// Reads Prometheus or OpenMetrics text, one scrape after the other.
    pub fn from_scrapes(scrapes: &[&str]) -> anyhow::Result<Self> {
        let mut exported = Self::default();
        for line in scrapes.iter().flat_map(|s| s.lines()) {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest
                    .split_once(' ')
                    .ok_or_else(|| anyhow::anyhow!("a # TYPE line without a type: {line}"))?;
                let suffixes: &[&str] = match kind {
                    "counter" => &["_total"],
                    "histogram" => &["_bucket", "_sum", "_count"],
                    _ => &[""],
                };
                for suffix in suffixes {
                    exported.declared.insert(format!("{name}{suffix}"));
                }
            } else if !line.starts_with('#') && !line.trim().is_empty() {
                let (name, labels) = sample(line)?;
                let entry = exported.series.entry(name).or_default();
                for (label, value) in labels {
                    entry.entry(label).or_default().insert(value);
                }
            }
        }
        Ok(exported)
    }

    fn knows(&self, name: &str) -> bool {
        self.series.contains_key(name) || self.declared.contains(name)
    }
}

/// A sample line's name and labels: `name{a="x",b="y\"z"} 1`.
fn sample(line: &str) -> anyhow::Result<(String, Vec<(String, String)>)> {
    let end = line
        .find(['{', ' '])
        .ok_or_else(|| anyhow::anyhow!("not a sample: {line}"))?;
    let name = line[..end].to_string();
    let mut labels = Vec::new();
    let Some(mut rest) = line[end..].strip_prefix('{') else {
        return Ok((name, labels));
    };
    while let Some((key, after)) = rest.split_once("=\"") {
        let key = key.trim_start_matches(',').trim().to_string();
        let mut value = String::new();
        let mut chars = after.char_indices();
        let close = loop {
            match chars.next() {
                Some((_, '\\')) => {
                    if let Some((_, c)) = chars.next() {
                        value.push(match c {
                            'n' => '\n',
                            c => c,
                        });
                    }
                }
                Some((at, '"')) => break at,
                Some((_, c)) => value.push(c),
                None => anyhow::bail!("an unclosed label value: {line}"),
            }
        };
        labels.push((key, value));
        rest = &after[close + 1..];
        if rest.starts_with('}') {
            break;
        }
    }
    Ok((name, labels))
}

/// A Grafana query as PromQL (see the module's doc).
pub fn from_grafana(query: &str) -> String {
    let query = query.trim();
    let query = match query
        .strip_prefix("label_values(")
        .and_then(|q| q.strip_suffix(')'))
        .and_then(|q| q.rsplit_once(','))
    {
        Some((selector, label)) => format!("group by ({}) ({selector})", label.trim()),
        None => query.to_string(),
    };
    let mut out = String::new();
    let mut rest = query.as_str();
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let (name, tail) = match after.strip_prefix('{') {
            Some(braced) => match braced.split_once('}') {
                Some((name, tail)) => (name, tail),
                None => (braced, ""),
            },
            None => {
                let end = after
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(after.len());
                (&after[..end], &after[end..])
            }
        };
        out.push_str(match name {
            "__rate_interval" | "__interval" | "__range" => "5m",
            _ => ".*",
        });
        rest = tail;
    }
    out.push_str(rest);
    out
}

/// What an expression evaluates to, with the labels its series can carry.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    Scalar,
    Text,
    Vector(BTreeSet<String>),
}

impl Value {
    fn labels(&self) -> BTreeSet<String> {
        match self {
            Value::Vector(labels) => labels.clone(),
            _ => BTreeSet::new(),
        }
    }
}

/// Parses `query` (PromQL) and returns what it names that `exported` lacks, one line each;
/// `Err` when it does not parse.
pub fn check(query: &str, exported: &Exported) -> Result<Vec<String>, String> {
    let expr = parser::parse(query)?;
    let mut checker = Checker {
        exported,
        problems: Vec::new(),
        unknown_metric: false,
    };
    checker.value(&expr);
    Ok(checker.problems)
}

struct Checker<'a> {
    exported: &'a Exported,
    problems: Vec<String>,
    /// A metric no binary exports was named: its labels are not reported too.
    unknown_metric: bool,
}

impl Checker<'_> {
    fn value(&mut self, expr: &Expr) -> Value {
        match expr {
            Expr::Aggregate(aggregate) => self.aggregate(aggregate),
            Expr::Unary(unary) => self.value(&unary.expr),
            Expr::Binary(binary) => self.binary(binary),
            Expr::Paren(paren) => self.value(&paren.expr),
            Expr::Subquery(subquery) => self.value(&subquery.expr),
            Expr::NumberLiteral(_) => Value::Scalar,
            Expr::StringLiteral(_) => Value::Text,
            Expr::VectorSelector(selector) => self.selector(selector),
            Expr::MatrixSelector(matrix) => self.selector(&matrix.vs),
            Expr::Call(call) => self.call(call),
            Expr::Extension(_) => Value::Vector(BTreeSet::new()),
        }
    }

    fn selector(&mut self, selector: &VectorSelector) -> Value {
        let Some(name) = selector.name.as_deref() else {
            self.problems
                .push(format!("a selector without a metric name: {selector}"));
            return Value::Vector(BTreeSet::new());
        };
        if !self.exported.knows(name) {
            self.unknown_metric = true;
            self.problems
                .push(format!("{name}: no binary exports this metric"));
            return Value::Vector(BTreeSet::new());
        }
        let no_series = BTreeMap::new();
        let series = self.exported.series.get(name).unwrap_or(&no_series);
        let matchers = selector
            .matchers
            .matchers
            .iter()
            .chain(selector.matchers.or_matchers.iter().flatten());
        for matcher in matchers.filter(|m| m.name != "__name__") {
            self.matcher(name, series, matcher);
        }
        Value::Vector(series.keys().cloned().collect())
    }

    fn matcher(&mut self, name: &str, series: &BTreeMap<String, BTreeSet<String>>, m: &Matcher) {
        match series.get(&m.name) {
            None if series.is_empty() => self.problems.push(format!(
                "{name}{{{}}}: the scrape has no series of {name} to show the label",
                m.name
            )),
            None => self.problems.push(format!(
                "{name}: no label {} (it has {:?})",
                m.name,
                series.keys()
            )),
            Some(values) if m.op == MatchOp::Equal && !values.contains(&m.value) => {
                self.problems.push(format!(
                    "{name}{{{}=\"{}\"}}: no series has that value (seen: {values:?})",
                    m.name, m.value
                ))
            }
            Some(_) => {}
        }
    }

    /// Each of `wanted` must be among `present`, for `what`.
    fn require(&mut self, wanted: &[String], present: &BTreeSet<String>, what: &str) {
        if self.unknown_metric {
            return;
        }
        for label in wanted.iter().filter(|l| !present.contains(*l)) {
            self.problems.push(format!(
                "{what}: label {label} is not on the series it applies to (they have {present:?})"
            ));
        }
    }

    fn aggregate(&mut self, aggregate: &AggregateExpr) -> Value {
        if let Some(param) = &aggregate.param {
            self.value(param);
        }
        let inner = self.value(&aggregate.expr).labels();
        let op = aggregate.op.to_string();
        let out = match &aggregate.modifier {
            Some(LabelModifier::Include(by)) => {
                self.require(&by.labels, &inner, &format!("{op} by"));
                by.labels.iter().cloned().collect()
            }
            Some(LabelModifier::Exclude(without)) => {
                self.require(&without.labels, &inner, &format!("{op} without"));
                inner
                    .iter()
                    .filter(|l| !without.labels.contains(*l))
                    .cloned()
                    .collect()
            }
            None => BTreeSet::new(),
        };
        match op.as_str() {
            // They return the input's series.
            "topk" | "bottomk" | "limitk" | "limit_ratio" => Value::Vector(inner),
            _ => Value::Vector(out),
        }
    }

    fn call(&mut self, call: &Call) -> Value {
        let args: Vec<Value> = call.args.args.iter().map(|a| self.value(a)).collect();
        let text = |at: usize| match call.args.args.get(at).map(|a| a.as_ref()) {
            Some(Expr::StringLiteral(s)) => Some(s.val.clone()),
            _ => None,
        };
        let first_vector = args
            .iter()
            .find(|v| matches!(v, Value::Vector(_)))
            .map(Value::labels)
            .unwrap_or_default();
        match call.func.name {
            "histogram_quantile" => {
                let mut labels = args.get(1).map(Value::labels).unwrap_or_default();
                self.require(&["le".to_string()], &labels, "histogram_quantile");
                labels.remove("le");
                Value::Vector(labels)
            }
            "label_replace" | "label_join" => {
                let mut labels = first_vector;
                labels.extend(text(1));
                Value::Vector(labels)
            }
            "absent" | "absent_over_time" | "vector" => Value::Vector(BTreeSet::new()),
            "scalar" | "time" | "pi" => Value::Scalar,
            _ => Value::Vector(first_vector),
        }
    }

    fn binary(&mut self, binary: &BinaryExpr) -> Value {
        let left = self.value(&binary.lhs);
        let right = self.value(&binary.rhs);
        let op = binary.op.to_string();
        let (l, r) = match (&left, &right) {
            (Value::Vector(l), Value::Vector(r)) => (l.clone(), r.clone()),
            (Value::Vector(_), _) => return left,
            (_, Value::Vector(_)) => return right,
            _ => return Value::Scalar,
        };
        let Some(modifier) = &binary.modifier else {
            return Value::Vector(if op == "or" { &l | &r } else { l });
        };
        let mut out = l.clone();
        match &modifier.matching {
            Some(LabelModifier::Include(on)) => {
                let both = &l & &r;
                self.require(&on.labels, &both, &format!("{op} on"));
                if modifier.card == VectorMatchCardinality::OneToOne && !binary.op.is_set_operator()
                {
                    out = on.labels.iter().cloned().collect();
                }
            }
            Some(LabelModifier::Exclude(ignoring)) => {
                let either = &l | &r;
                self.require(&ignoring.labels, &either, &format!("{op} ignoring"));
                out.retain(|label| !ignoring.labels.contains(label));
            }
            None => {}
        }
        match &modifier.card {
            VectorMatchCardinality::ManyToOne(extra) => {
                self.require(&extra.labels, &r, "group_left");
                out.extend(extra.labels.iter().cloned());
            }
            VectorMatchCardinality::OneToMany(extra) => {
                self.require(&extra.labels, &l, "group_right");
                out = &r | &extra.labels.iter().cloned().collect::<BTreeSet<_>>();
            }
            _ if op == "or" => out = &l | &r,
            _ => {}
        }
        Value::Vector(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRAPE: &str = r#"# HELP p_starts Starts.
# TYPE p_starts counter
p_starts_total{prefetch="a",namespace="n",result="warm"} 1
p_starts_total{prefetch="a",namespace="n",result="cold"} 2
# TYPE p_pull_seconds histogram
p_pull_seconds_bucket{registry="docker.io",le="1.0"} 1
p_pull_seconds_bucket{registry="docker.io",le="+Inf"} 1
p_pull_seconds_sum{registry="docker.io"} 0.5
p_pull_seconds_count{registry="docker.io"} 1
# TYPE p_errors counter
# TYPE p_leader gauge
p_leader 1
p_quoted{text="a \"b\", c"} 1
# EOF
"#;

    fn problems(query: &str) -> Vec<String> {
        check(query, &Exported::from_scrapes(&[SCRAPE]).unwrap()).unwrap()
    }

    #[test]
    fn scrapes_are_read_with_their_labels_and_declared_families() {
        let exported = Exported::from_scrapes(&[SCRAPE]).unwrap();
        assert!(exported.knows("p_errors_total") && !exported.knows("p_errors"));
        assert!(exported.knows("p_pull_seconds_bucket"));
        let quoted = &exported.series["p_quoted"]["text"];
        assert_eq!(quoted, &BTreeSet::from(["a \"b\", c".to_string()]));
        assert_eq!(
            exported.series["p_starts_total"].keys().collect::<Vec<_>>(),
            ["namespace", "prefetch", "result"]
        );
    }

    #[test]
    fn what_the_scrape_has_passes() {
        for query in [
            r#"sum by (namespace, prefetch, result) (increase(p_starts_total{result="cold"}[1h]))"#,
            "histogram_quantile(0.95, sum by (le, registry) (rate(p_pull_seconds_bucket[5m])))",
            "sum(rate(p_errors_total[5m]))",
            "max(p_leader) < 1 or absent(p_leader)",
            "sum by (namespace) (p_starts_total) / on (namespace) group_left sum by (namespace) (p_starts_total)",
            "sum without (result) (p_starts_total) unless sum without (result) (p_starts_total offset 15m)",
        ] {
            assert_eq!(problems(query), Vec::<String>::new(), "{query}");
        }
    }

    #[test]
    fn what_the_scrape_lacks_is_named() {
        for (query, expected) in [
            (
                "sum(rate(p_start_total[5m]))",
                "p_start_total: no binary exports",
            ),
            ("p_starts_total{reason=\"x\"}", "no label reason"),
            (
                "p_starts_total{result=\"lukewarm\"}",
                "no series has that value",
            ),
            ("sum by (node) (p_starts_total)", "sum by: label node"),
            (
                "sum without (node) (p_starts_total)",
                "sum without: label node",
            ),
            (
                "histogram_quantile(0.9, sum by (registry) (rate(p_pull_seconds_bucket[5m])))",
                "histogram_quantile: label le",
            ),
            (
                "sum by (prefetch) (sum by (namespace) (p_starts_total))",
                "sum by: label prefetch",
            ),
            (
                "p_errors_total{reason=\"x\"}",
                "no series of p_errors_total",
            ),
            (
                "sum by (namespace) (p_starts_total) / on (registry) sum by (namespace) (p_starts_total)",
                "/ on: label registry",
            ),
        ] {
            let found = problems(query);
            assert!(
                found.iter().any(|p| p.contains(expected)),
                "{query}: {found:?}"
            );
        }
        // An unknown metric is reported once, not again for each label it lacks.
        assert_eq!(
            problems("sum by (namespace) (rate(p_start_total[5m]))").len(),
            1
        );
        assert!(check("sum(rate(p_starts_total[5m])", &Exported::default()).is_err());
    }

    #[test]
    fn grafana_queries_become_promql() {
        assert_eq!(
            from_grafana(
                r#"sum(rate(x{namespace=~"$namespace", p=~"${prefetch}"}[$__rate_interval]))"#
            ),
            r#"sum(rate(x{namespace=~".*", p=~".*"}[5m]))"#
        );
        assert_eq!(
            from_grafana(r#"label_values(x{namespace=~"$namespace"}, prefetch)"#),
            r#"group by (prefetch) (x{namespace=~".*"})"#
        );
        assert_eq!(from_grafana("increase(x[$__range])"), "increase(x[5m])");
    }
}
