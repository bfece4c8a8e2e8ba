//! The words that drift from the code (issue 24), checked against the code itself:
//!
//! - the workload kinds a Prefetch selects ([`WorkloadKind::ALL`]) are named where a user reads
//!   what a Prefetch selects: the CRD's descriptions (`kubectl explain`) and both binaries'
//!   `--help`; no help text speaks of Deployments alone;
//! - the flag tables of docs/src/controller.md (`plan` included) and docs/src/webhook.md list
//!   exactly the flags clap defines, with clap's defaults, and every flag but `plan -f` reads
//!   `PREFETCH_<NAME>` as the docs say;
//! - the metrics the docs name are the ones the binaries register (and every registered one is
//!   documented), with the label values that the code enumerates.
//!
//! Reads files and builds clap commands and metric registries: no cluster, no network.

use std::collections::{BTreeMap, BTreeSet};

use clap::CommandFactory;
use prefetch_common::WorkloadKind;
use prefetch_controller::core::gate::Release;
use prefetch_tests::repo;
use prefetch_webhook::core::limits::Stage;
use serde_json::Value;

fn read(relative: &str) -> String {
    let path = repo::root().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

// ---------------------------------------------------------------------------------------------
// Kinds

/// The kinds that roll out: every kind but Job, whose template cannot change (the controller
/// never signals a Job, `controller/core/src/signal.rs`; the webhook caches no Job).
fn kinds_that_roll_out() -> Vec<WorkloadKind> {
    WorkloadKind::ALL
        .into_iter()
        .filter(|kind| *kind != WorkloadKind::Job)
        .collect()
}

/// Whether `text` names `kind` as a word, singular or plural (`Job` inside `CronJob` does not
/// count).
fn names_kind(text: &str, kind: WorkloadKind) -> bool {
    let name = kind.as_str();
    let bytes = text.as_bytes();
    text.match_indices(name).any(|(at, _)| {
        let before = at.checked_sub(1).map(|i| bytes[i]);
        let mut end = at + name.len();
        if bytes.get(end) == Some(&b's') {
            end += 1;
        }
        let after = bytes.get(end).copied();
        !before.is_some_and(|b| b.is_ascii_alphanumeric())
            && !after.is_some_and(|b| b.is_ascii_alphanumeric())
    })
}

fn kinds_named(text: &str) -> BTreeSet<&'static str> {
    WorkloadKind::ALL
        .into_iter()
        .filter(|kind| names_kind(text, *kind))
        .map(WorkloadKind::as_str)
        .collect()
}

/// Every kind of `kinds` is named in `text`, or a message saying which are not.
fn assert_names_kinds(what: &str, text: &str, kinds: &[WorkloadKind]) {
    let missing: Vec<&str> = kinds
        .iter()
        .filter(|kind| !names_kind(text, **kind))
        .map(|kind| kind.as_str())
        .collect();
    assert!(
        missing.is_empty(),
        "{what} does not name {missing:?} (a Prefetch selects {:?}):\n{text}",
        WorkloadKind::ALL.map(WorkloadKind::as_str)
    );
}

/// A text that names Deployments names another kind too.
fn assert_not_deployments_only(what: &str, text: &str) {
    let named = kinds_named(text);
    assert!(
        named != BTreeSet::from(["Deployment"]),
        "{what} speaks of Deployments only, but a Prefetch selects {:?}:\n{text}",
        WorkloadKind::ALL.map(WorkloadKind::as_str)
    );
}

#[test]
fn kind_names_are_matched_as_words() {
    assert!(names_kind(
        "Deployments, StatefulSets",
        WorkloadKind::Deployment
    ));
    assert!(names_kind("a Job.", WorkloadKind::Job));
    assert!(names_kind("Jobs", WorkloadKind::Job));
    assert!(!names_kind("CronJobs only", WorkloadKind::Job));
    assert!(!names_kind("Jobless", WorkloadKind::Job));
    assert_eq!(
        kinds_named("a CronJob's Jobs"),
        BTreeSet::from(["Job", "CronJob"])
    );
}

/// The generated CRD (`make crd`), as JSON.
fn crd() -> Value {
    serde_saphyr::from_str(&read(
        "manifests/base/crd/prefetches.cache.techsquad.rocks.yaml",
    ))
    .expect("the CRD is YAML")
}

fn description<'v>(crd: &'v Value, pointer: &str) -> &'v str {
    crd.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("the CRD has no description at {pointer}"))
}

/// Every string `description` in a JSON schema, with its pointer.
fn descriptions(value: &Value, at: String, out: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) => {
            for (key, value) in map {
                let here = format!("{at}/{key}");
                match (key.as_str(), value) {
                    ("description", Value::String(text)) => out.push((here, text.clone())),
                    _ => descriptions(value, here, out),
                }
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                descriptions(item, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn the_crd_descriptions_name_the_kinds_a_prefetch_selects() {
    let crd = crd();
    let schema = "/spec/versions/0/schema/openAPIV3Schema";
    let spec = format!("{schema}/properties/spec");
    for (what, pointer, kinds) in [
        (
            "the Prefetch's description",
            format!("{schema}/description"),
            WorkloadKind::ALL.to_vec(),
        ),
        (
            "spec's description",
            format!("{spec}/description"),
            WorkloadKind::ALL.to_vec(),
        ),
        (
            "filter_by_labels' description",
            format!("{spec}/properties/filter_by_labels/description"),
            WorkloadKind::ALL.to_vec(),
        ),
        (
            "kinds' description",
            format!("{spec}/properties/kinds/description"),
            WorkloadKind::ALL.to_vec(),
        ),
        (
            "gate_rollouts' description",
            format!("{spec}/properties/gate_rollouts/description"),
            kinds_that_roll_out(),
        ),
    ] {
        assert_names_kinds(
            &format!("the CRD's {what}"),
            description(&crd, &pointer),
            &kinds,
        );
    }
    // The enum kubectl explain lists for kinds is WorkloadKind's.
    let listed: Vec<&str> = crd
        .pointer(&format!("{spec}/properties/kinds/items/enum"))
        .and_then(Value::as_array)
        .expect("kinds' items are an enum")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(listed, WorkloadKind::ALL.map(WorkloadKind::as_str));
    // No description speaks of Deployments alone, but the status' `deployment` field, which
    // only a Deployment's rollout sets.
    let mut all = Vec::new();
    descriptions(&crd, String::new(), &mut all);
    assert!(all.len() > 20, "{all:?}");
    for (pointer, text) in all {
        if pointer.ends_with("/last_rollout/properties/deployment/description") {
            continue;
        }
        assert_not_deployments_only(&format!("the CRD's description at {pointer}"), &text);
    }
}

/// Every help text of a command and its subcommands: about, long about, and each argument's.
fn help_texts(command: &clap::Command, at: &str, out: &mut Vec<(String, String)>) {
    let about = [command.get_about(), command.get_long_about()];
    for text in about.into_iter().flatten() {
        out.push((format!("{at}'s about"), text.to_string()));
    }
    for arg in command.get_arguments() {
        let help = [arg.get_help(), arg.get_long_help()];
        for text in help.into_iter().flatten() {
            out.push((format!("{at} --{}", arg.get_id()), text.to_string()));
        }
    }
    for sub in command.get_subcommands() {
        help_texts(sub, &format!("{at} {}", sub.get_name()), out);
    }
}

#[test]
fn the_controllers_help_names_every_kind() {
    let mut command = prefetch_controller::shell::config::Cli::command();
    let about = command.get_about().expect("an about text").to_string();
    assert_names_kinds("prefetch-controller --help", &about, &WorkloadKind::ALL);
    let plan = command.find_subcommand("plan").expect("a plan subcommand");
    let plan_about = plan
        .get_about()
        .expect("plan has an about text")
        .to_string();
    assert_names_kinds(
        "prefetch-controller plan's about",
        &plan_about,
        &WorkloadKind::ALL,
    );
    let long_help = command.render_long_help().to_string();
    assert_names_kinds("prefetch-controller --help", &long_help, &WorkloadKind::ALL);
    let mut texts = Vec::new();
    help_texts(&command, "prefetch-controller", &mut texts);
    for (what, text) in texts {
        assert_not_deployments_only(&what, &text);
    }
}

#[test]
fn the_webhooks_help_names_every_kind_that_rolls_out() {
    let mut command = prefetch_webhook::shell::config::Args::command();
    let about = command.get_about().expect("an about text").to_string();
    assert_names_kinds("prefetch-webhook --help", &about, &kinds_that_roll_out());
    let long_help = command.render_long_help().to_string();
    assert_names_kinds(
        "prefetch-webhook --help",
        &long_help,
        &kinds_that_roll_out(),
    );
    // The pod gate's live read covers every cached kind.
    let live_read = command
        .get_arguments()
        .find(|arg| arg.get_long() == Some("live-read-timeout"))
        .and_then(|arg| arg.get_help())
        .expect("--live-read-timeout has help")
        .to_string();
    assert_names_kinds(
        "--live-read-timeout's help",
        &live_read,
        &kinds_that_roll_out(),
    );
    let mut texts = Vec::new();
    help_texts(&command, "prefetch-webhook", &mut texts);
    for (what, text) in texts {
        assert_not_deployments_only(&what, &text);
        assert!(
            !text.contains("README"),
            "{what} sends the reader to the README; the text is in the book (docs/src/): {text}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Flags

/// The lines of `text` from the heading `heading` (exactly) to the next heading of its level
/// or above.
fn section<'t>(text: &'t str, heading: &str) -> Vec<&'t str> {
    let level = heading.chars().take_while(|&c| c == '#').count();
    let mut lines = text.lines().skip_while(|line| line.trim_end() != heading);
    assert!(lines.next().is_some(), "no heading {heading:?}");
    lines
        .take_while(|line| {
            let hashes = line.chars().take_while(|&c| c == '#').count();
            !(hashes > 0 && hashes <= level && line[hashes..].starts_with(' '))
        })
        .collect()
}

/// The code spans of `text`, in order.
fn code_spans(text: &str) -> Vec<&str> {
    text.split('`').skip(1).step_by(2).collect()
}

/// One row of a flag table: its flags (`-f`, `--filename`) and the defaults named in its
/// default cell, in code spans.
#[derive(Debug)]
struct FlagRow {
    flags: Vec<String>,
    defaults: Vec<String>,
}

/// The rows of the flag tables (`| flag | default | meaning |`) among `lines`.
fn flag_rows(lines: &[&str]) -> Vec<FlagRow> {
    let mut rows = Vec::new();
    let mut in_table = false;
    for line in lines {
        let line = line.trim();
        if !line.starts_with('|') {
            in_table = false;
            continue;
        }
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        if cells.first() == Some(&"flag") {
            in_table = true;
            continue;
        }
        if !in_table || cells.iter().all(|c| c.chars().all(|ch| ch == '-')) {
            continue;
        }
        rows.push(FlagRow {
            flags: code_spans(cells[0])
                .into_iter()
                .filter(|span| span.starts_with('-'))
                .map(String::from)
                .collect(),
            defaults: cells
                .get(1)
                .map(|cell| code_spans(cell).into_iter().map(String::from).collect())
                .unwrap_or_default(),
        });
    }
    rows
}

/// A clap argument as the docs name it (`-f`, `--filename`), with its defaults and env.
#[derive(Debug)]
struct ClapFlag {
    names: Vec<String>,
    defaults: Vec<String>,
    env: Option<String>,
}

/// The flags of `command` itself (not its subcommands), but --help and --version.
fn clap_flags(command: &clap::Command) -> BTreeMap<String, ClapFlag> {
    command
        .get_arguments()
        .filter(|arg| !matches!(arg.get_id().as_str(), "help" | "version"))
        .filter_map(|arg| {
            let long = arg.get_long()?;
            let mut names: Vec<String> = arg
                .get_short()
                .map(|s| format!("-{s}"))
                .into_iter()
                .collect();
            names.push(format!("--{long}"));
            let flag = ClapFlag {
                names,
                defaults: arg
                    .get_default_values()
                    .iter()
                    .map(|v| v.to_string_lossy().into_owned())
                    .collect(),
                env: arg.get_env().map(|e| e.to_string_lossy().into_owned()),
            };
            Some((format!("--{long}"), flag))
        })
        .collect()
}

/// The docs' table among `lines` and clap's flags of `command` agree: the same flags, each
/// clap default named in its row's default cell (`<version>` standing for the crate's).
fn assert_table_matches(doc: &str, lines: &[&str], command: &clap::Command) {
    let rows = flag_rows(lines);
    let flags = clap_flags(command);
    let documented: BTreeSet<&str> = rows
        .iter()
        .flat_map(|row| row.flags.iter().map(String::as_str))
        .collect();
    let defined: BTreeSet<&str> = flags
        .values()
        .flat_map(|flag| flag.names.iter().map(String::as_str))
        .collect();
    let undefined: Vec<_> = documented.difference(&defined).collect();
    let undocumented: Vec<_> = defined.difference(&documented).collect();
    assert!(
        undefined.is_empty() && undocumented.is_empty(),
        "{doc}'s table of `{}` flags: documented but not defined: {undefined:?}; \
         defined but not documented: {undocumented:?}",
        command.get_name()
    );
    for (long, flag) in &flags {
        let row = rows
            .iter()
            .find(|row| row.flags.contains(long))
            .expect("documented");
        let named: Vec<String> = row
            .defaults
            .iter()
            .map(|d| d.replace("<version>", env!("CARGO_PKG_VERSION")))
            .collect();
        for default in &flag.defaults {
            assert!(
                named.contains(default),
                "{doc}: {long} defaults to `{default}`, its row says {:?}",
                row.defaults
            );
        }
    }
}

/// Every flag of `command` reads `PREFETCH_<NAME>`, as both flag tables say.
fn assert_env_names(command: &clap::Command, except: &[&str]) {
    for (long, flag) in clap_flags(command) {
        if except.contains(&long.as_str()) {
            continue;
        }
        let want = format!(
            "PREFETCH_{}",
            long.trim_start_matches('-')
                .replace('-', "_")
                .to_uppercase()
        );
        assert_eq!(
            flag.env.as_deref(),
            Some(want.as_str()),
            "{} {long}: the docs say every flag reads PREFETCH_<NAME>",
            command.get_name()
        );
    }
}

#[test]
fn the_controllers_flag_tables_are_its_flags() {
    let doc = read("docs/src/controller.md");
    let command = prefetch_controller::shell::config::Cli::command();
    let flags = section(&doc, "## prefetch-controller flags");
    let run: Vec<&str> = flags
        .iter()
        .copied()
        .take_while(|line| !line.starts_with("### "))
        .collect();
    assert_table_matches("docs/src/controller.md", &run, &command);
    assert_env_names(&command, &[]);
    let plan = command.find_subcommand("plan").expect("a plan subcommand");
    let plan_lines = section(&doc, "### plan flags");
    assert_table_matches("docs/src/controller.md", &plan_lines, plan);
    assert_env_names(plan, &["--filename"]);
}

#[test]
fn the_webhooks_flag_table_is_its_flags() {
    let doc = read("docs/src/webhook.md");
    let command = prefetch_webhook::shell::config::Args::command();
    assert_table_matches(
        "docs/src/webhook.md",
        &section(&doc, "## prefetch-webhook flags"),
        &command,
    );
    assert_env_names(&command, &[]);
}

#[test]
fn flag_tables_are_read_as_written() {
    let rows = flag_rows(&[
        "| flag | default | meaning |",
        "|---|---|---|",
        "| `--a`, `--b` | `1`, `2` | `--c` is not a flag of this row |",
        "| `-f`, `--filename` | required | files |",
        "",
        "| `--not-a-table-row` | | |",
    ]);
    let flags: Vec<&Vec<String>> = rows.iter().map(|r| &r.flags).collect();
    assert_eq!(
        flags,
        [
            &vec!["--a".to_string(), "--b".into()],
            &vec!["-f".into(), "--filename".into()]
        ]
    );
    assert_eq!(rows[0].defaults, ["1", "2"]);
    assert!(rows[1].defaults.is_empty());
}

// ---------------------------------------------------------------------------------------------
// Metrics

/// A registered metric: its name as scraped (`_total` on counters), type, and the label names
/// and values of the series it exports from the start.
#[derive(Debug, Default)]
struct Registered {
    kind: String,
    labels: BTreeMap<String, BTreeSet<String>>,
}

/// The metrics of a text exposition, by the name the docs use: a counter's with `_total`.
fn registered(exposition: &str) -> BTreeMap<String, Registered> {
    let mut metrics: BTreeMap<String, Registered> = BTreeMap::new();
    for line in exposition.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name type");
            let name = match kind {
                "counter" => format!("{name}_total"),
                _ => name.to_string(),
            };
            metrics.entry(name).or_default().kind = kind.to_string();
        } else if !line.starts_with('#') && !line.is_empty() {
            let name_end = line.find(['{', ' ']).expect("a sample");
            let name = &line[..name_end];
            let Some(metric) = metrics.iter_mut().find_map(|(base, m)| {
                let suffixes = ["", "_bucket", "_sum", "_count", "_created"];
                suffixes
                    .iter()
                    .any(|s| name.strip_suffix(s) == Some(base.as_str()))
                    .then_some(m)
            }) else {
                continue;
            };
            if let Some(labels) = line[name_end..]
                .strip_prefix('{')
                .and_then(|rest| rest.split_once('}'))
                .map(|(labels, _)| labels)
            {
                for pair in labels.split(',').filter(|p| !p.is_empty()) {
                    let (key, value) = pair.split_once('=').expect("label=value");
                    if key == "le" {
                        continue;
                    }
                    metric
                        .labels
                        .entry(key.to_string())
                        .or_default()
                        .insert(value.trim_matches('"').to_string());
                }
            }
        }
    }
    metrics
}

/// The metrics registered in Rust `source` (`registry.register("name", "help",
/// metric.clone())`), by the name the docs use, with their type read from the declaration of
/// the registered value (`let name = Family::<L, Counter>::default()`, `name: Family<Gauge>`).
/// The text exposition leaves out a labelled family with no series yet, so the registrations
/// are read where they are written.
fn registrations(source: &str, prefix: &str) -> BTreeMap<String, String> {
    let mut metrics = BTreeMap::new();
    for (at, _) in source.match_indices("registry.register(") {
        let call = &source[at + "registry.register(".len()..];
        let call = &call[..call.find(");").expect("a register call ends")];
        let literals: Vec<&str> = call.split('"').collect();
        let name = literals.get(1).expect("the name comes first");
        let value = literals.last().expect("the metric comes last");
        let value = value.trim().trim_matches(',').trim();
        let value = value.strip_suffix(".clone()").unwrap_or(value);
        let ident = value.rsplit('.').next().unwrap_or(value).trim();
        // A `let` runs to its `;` (perhaps over lines), a field to the end of its line; the
        // first declaration of the name that names a metric type says which.
        let kind = [
            (format!("let {ident} ="), ";"),
            (format!(" {ident}: "), "\n"),
        ]
        .iter()
        .flat_map(|(pattern, end)| {
            source
                .match_indices(pattern.as_str())
                .map(move |(from, _)| {
                    let rest = &source[from..];
                    &rest[..rest.find(end).unwrap_or(rest.len())]
                })
        })
        .find_map(|declaration| {
            ["Counter", "Gauge", "Histogram"]
                .into_iter()
                .find(|kind| declaration.contains(kind))
        })
        .unwrap_or_else(|| panic!("no typed declaration of {ident}, registered as {name}"))
        .to_lowercase();
        let full = match kind.as_str() {
            "counter" => format!("{prefix}{name}_total"),
            _ => format!("{prefix}{name}"),
        };
        metrics.insert(full, kind);
    }
    metrics
}

/// The registered metrics of a binary: those of its exposition (with the label values of the
/// series exported from the start) and those its sources register.
fn binary_metrics(
    exposition: &str,
    sources: &[&str],
    prefix: &str,
) -> BTreeMap<String, Registered> {
    let mut metrics = registered(exposition);
    for source in sources {
        let found = registrations(&read(source), prefix);
        assert!(!found.is_empty(), "{source} registers no metric");
        for (name, kind) in found {
            let metric = metrics.entry(name.clone()).or_default();
            assert!(
                metric.kind.is_empty() || metric.kind == kind,
                "{name}: {source} registers a {kind}, the exposition says {}",
                metric.kind
            );
            metric.kind = kind;
        }
    }
    metrics
}

fn controller_metrics() -> BTreeMap<String, Registered> {
    let exposition = prefetch_controller::shell::metrics::Metrics::default()
        .encode()
        .unwrap();
    binary_metrics(
        &exposition,
        &["controller/src/shell/metrics.rs", "shell/src/watch.rs"],
        "prefetch_controller_",
    )
}

fn webhook_metrics() -> BTreeMap<String, Registered> {
    let exposition = prefetch_webhook::shell::metrics::Metrics::default()
        .encode()
        .unwrap();
    binary_metrics(
        &exposition,
        &["webhook/src/shell/metrics.rs", "shell/src/watch.rs"],
        "prefetch_webhook_",
    )
}

#[test]
fn registrations_are_read_as_written() {
    let source = r#"
        pub struct M { pub stale: Family<Gauge>, }
        let a = Family::<L, Counter>::default();
        registry.register("a", "help, with \"commas\"", a.clone());
        let b =
            Histogram::new([1.0]);
        registry.register(
            "b_seconds",
            "help",
            b.clone(),
        );
        registry.register("stale", "help", metrics.stale.clone());
    "#;
    let found = registrations(source, "p_");
    let found: Vec<(&str, &str)> = found
        .iter()
        .map(|(n, k)| (n.as_str(), k.as_str()))
        .collect();
    assert_eq!(
        found,
        [
            ("p_a_total", "counter"),
            ("p_b_seconds", "histogram"),
            ("p_stale", "gauge")
        ]
    );
}

/// A metric the docs name: its label names (in braces) and the label values listed in code
/// spans in the parentheses after it.
#[derive(Debug, Default, PartialEq)]
struct Documented {
    labels: BTreeSet<String>,
    values: BTreeSet<String>,
}

/// A metric name without the prefix, perhaps with label names: `leader`, `pod_gate_total{result}`
/// (not the prefix itself, `prefetch_webhook_`, nor a path or a flag).
fn is_metric_name(span: &str) -> bool {
    let name = span.split('{').next().unwrap_or("");
    !name.is_empty()
        && name.chars().all(|c| c.is_ascii_lowercase() || c == '_')
        && !name.starts_with('_')
        && !name.ends_with('_')
}

/// The metrics named in a Metrics section: code spans outside parentheses that look like
/// metric names (`reconciles_total{result}`); code spans inside the parentheses right after
/// one with labels are its label values.
fn documented_metrics(lines: &[&str], prefix: &str) -> BTreeMap<String, Documented> {
    let text = lines.join("\n");
    let mut metrics: BTreeMap<String, Documented> = BTreeMap::new();
    let mut depth = 0usize;
    let mut last: Option<String> = None;
    let mut chars = text.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    last = None;
                }
            }
            '`' => {
                let end = text[at + 1..].find('`').expect("closed code span") + at + 1;
                let span = &text[at + 1..end];
                while chars.peek().is_some_and(|(i, _)| *i <= end) {
                    chars.next();
                }
                if depth == 0 {
                    last = None;
                    if is_metric_name(span) {
                        let (name, labels) = match span.split_once('{') {
                            Some((name, labels)) => (name, labels.trim_end_matches('}')),
                            None => (span, ""),
                        };
                        let full = format!("{prefix}{name}");
                        let entry = metrics.entry(full.clone()).or_default();
                        entry.labels.extend(
                            labels
                                .split(',')
                                .filter(|l| !l.is_empty())
                                .map(String::from),
                        );
                        if !labels.is_empty() {
                            last = Some(full);
                        }
                    }
                } else if depth == 1
                    && let Some(metric) = &last
                    && span.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                {
                    metrics
                        .get_mut(metric)
                        .expect("recorded")
                        .values
                        .insert(span.to_string());
                }
            }
            _ => {}
        }
    }
    metrics
}

/// Both directions between the docs' metrics and the registered ones, and the documented
/// label values among the ones the code exports from the start.
fn assert_metrics_match(
    doc: &str,
    documented: &BTreeMap<String, Documented>,
    registered: &BTreeMap<String, Registered>,
) {
    let named: BTreeSet<&String> = documented.keys().collect();
    let exported: BTreeSet<&String> = registered.keys().collect();
    let unknown: Vec<_> = named.difference(&exported).collect();
    let undocumented: Vec<_> = exported.difference(&named).collect();
    assert!(
        unknown.is_empty() && undocumented.is_empty(),
        "{doc}: documented but not registered: {unknown:?}; registered but not documented: \
         {undocumented:?}"
    );
    for (name, metric) in registered {
        let doc_metric = &documented[name];
        for (label, values) in &metric.labels {
            assert!(
                doc_metric.labels.contains(label),
                "{doc}: {name} has label {label}, documented {:?}",
                doc_metric.labels
            );
            if label != "endpoint" {
                let missing: Vec<_> = values.difference(&doc_metric.values).collect();
                assert!(
                    missing.is_empty(),
                    "{doc}: {name}{{{label}}} exports {missing:?}, not documented"
                );
            }
        }
    }
}

#[test]
fn the_controllers_metrics_are_documented_as_registered() {
    let doc = read("docs/src/controller.md");
    let documented = documented_metrics(&section(&doc, "## Metrics"), "prefetch_controller_");
    let registered = controller_metrics();
    assert!(registered.len() > 10, "{registered:?}");
    assert_metrics_match("docs/src/controller.md", &documented, &registered);
    // Every reason a gated pod is released for, and no other.
    let releases: BTreeSet<String> = all_releases()
        .into_iter()
        .map(|r| r.as_str().to_string())
        .collect();
    assert_eq!(
        documented["prefetch_controller_gate_releases_total"].values, releases,
        "docs/src/controller.md: gate_releases_total's results"
    );
    let reconcile = &documented["prefetch_controller_reconciles_total"];
    assert_eq!(reconcile.labels, BTreeSet::from(["result".to_string()]));
}

#[test]
fn the_webhooks_metrics_are_documented_as_registered() {
    let doc = read("docs/src/webhook.md");
    let documented = documented_metrics(&section(&doc, "## Metrics"), "prefetch_webhook_");
    let registered = webhook_metrics();
    assert!(registered.len() > 10, "{registered:?}");
    assert_metrics_match("docs/src/webhook.md", &documented, &registered);
    // Label values the code enumerates: the stages a connection is cut off in, the results
    // of a request and of the pod gate (exported from the start), the pod gate's error
    // reasons (the literals http.rs counts).
    let stages: BTreeSet<String> = all_stages()
        .into_iter()
        .map(|s| s.as_str().to_string())
        .collect();
    assert_eq!(
        documented["prefetch_webhook_connection_timeouts_total"].values,
        stages
    );
    for name in [
        "prefetch_webhook_requests_total",
        "prefetch_webhook_pod_gate_total",
    ] {
        assert_eq!(
            documented[name].values, registered[name].labels["result"],
            "docs/src/webhook.md: {name}'s results"
        );
    }
    let http = read("webhook/src/shell/http.rs");
    let reasons = string_arguments(&http, "pod_error(")
        .into_iter()
        .chain(string_arguments(&http, "pod_answer("))
        .collect::<BTreeSet<_>>();
    assert!(reasons.len() >= 4, "{reasons:?}");
    assert_eq!(
        documented["prefetch_webhook_pod_gate_errors_total"].values, reasons,
        "docs/src/webhook.md: pod_gate_errors_total's reasons"
    );
}

/// Every full metric name (`prefetch_controller_...`, `prefetch_webhook_...`) anywhere in the
/// book, the README and the examples is one that is registered.
#[test]
fn metric_names_anywhere_in_the_docs_are_registered() {
    let mut names: BTreeSet<String> = BTreeSet::new();
    for metrics in [controller_metrics(), webhook_metrics()] {
        for (name, metric) in metrics {
            if metric.kind == "histogram" {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
            names.insert(name);
        }
    }
    let mut files = vec![repo::root().join("README.md")];
    for dir in ["docs/src", "examples"] {
        for entry in std::fs::read_dir(repo::root().join(dir)).unwrap() {
            files.push(entry.unwrap().path());
        }
    }
    let mut unknown = Vec::new();
    for file in files {
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        for prefix in ["prefetch_controller_", "prefetch_webhook_"] {
            for (at, _) in text.match_indices(prefix) {
                let name: String = text[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                    .collect();
                if name != prefix && !names.contains(&name) {
                    unknown.push(format!("{}: {name}", file.display()));
                }
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "metrics no binary registers: {unknown:#?}"
    );
}

/// The string literals passed first after `state`, in calls to `call` in `source`:
/// `pod_error(state, "panic")` and `pod_answer(state, answer, "live_read")`.
fn string_arguments(source: &str, call: &str) -> Vec<String> {
    source
        .match_indices(call)
        .filter_map(|(at, _)| {
            let args = &source[at + call.len()..];
            let args = &args[..args.find(')')?];
            let start = args.find('"')? + 1;
            let end = args[start..].find('"')? + start;
            Some(args[start..end].to_string())
        })
        .collect()
}

/// Every [`Release`]: the match fails to compile when a variant is added, until it is listed.
fn all_releases() -> Vec<Release> {
    let all = [
        Release::Prefetched,
        Release::NodePrefetched,
        Release::TimedOut,
        Release::PrefetchRemoved,
        Release::GateDisabled,
    ];
    for release in all {
        match release {
            Release::Prefetched
            | Release::NodePrefetched
            | Release::TimedOut
            | Release::PrefetchRemoved
            | Release::GateDisabled => {}
        }
    }
    all.to_vec()
}

/// Every [`Stage`], kept complete the same way.
fn all_stages() -> Vec<Stage> {
    let all = [
        Stage::Handshake,
        Stage::Headers,
        Stage::Body,
        Stage::Response,
        Stage::Idle,
    ];
    for stage in all {
        match stage {
            Stage::Handshake | Stage::Headers | Stage::Body | Stage::Response | Stage::Idle => {}
        }
    }
    all.to_vec()
}

#[test]
fn metric_sections_are_read_as_written() {
    let metrics = documented_metrics(
        &[
            "prefix `p_`: `a_total{result}` (`x`, `y` (why), `--flag`), `b_seconds` (`--c`),",
            "`leader`, `d_total{stage}` (stage `s`; see [there](x.md)).",
        ],
        "p_",
    );
    let names: Vec<&str> = metrics.keys().map(String::as_str).collect();
    assert_eq!(names, ["p_a_total", "p_b_seconds", "p_d_total", "p_leader"]);
    assert_eq!(
        metrics["p_a_total"].values,
        BTreeSet::from(["x".to_string(), "y".into()])
    );
    assert!(metrics["p_b_seconds"].values.is_empty());
    assert_eq!(
        metrics["p_d_total"].values,
        BTreeSet::from(["s".to_string()])
    );
}
