//! Kubernetes label syntax (apimachinery `validation.IsQualifiedName` / `IsValidLabelValue`)
//! and equality-based selection.

use std::collections::BTreeMap;

const MAX_NAME_LEN: usize = 63;
const MAX_PREFIX_LEN: usize = 253;

/// Why a label key or value is not valid; the text reads after "<field>: ".
pub fn label_key_error(key: &str) -> Option<String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        if prefix.is_empty() {
            return Some(format!(
                "invalid label key {key:?}: prefix part must be non-empty"
            ));
        }
        if let Some(why) = dns1123_subdomain_error(prefix) {
            return Some(format!("invalid label key {key:?}: prefix part {why}"));
        }
    }
    if name.is_empty() {
        return Some(format!(
            "invalid label key {key:?}: name part must be non-empty"
        ));
    }
    if name.len() > MAX_NAME_LEN {
        return Some(format!(
            "invalid label key {key:?}: name part must be no more than {MAX_NAME_LEN} characters"
        ));
    }
    if !is_label_name_shape(name) {
        return Some(format!(
            "invalid label key {key:?}: name part must consist of alphanumeric characters, \
             '-', '_' or '.', and must start and end with an alphanumeric character"
        ));
    }
    None
}

pub fn label_value_error(value: &str) -> Option<String> {
    if value.len() > MAX_NAME_LEN {
        return Some(format!(
            "invalid label value {value:?}: must be no more than {MAX_NAME_LEN} characters"
        ));
    }
    if !value.is_empty() && !is_label_name_shape(value) {
        return Some(format!(
            "invalid label value {value:?}: must be empty or consist of alphanumeric characters, \
             '-', '_' or '.', and must start and end with an alphanumeric character"
        ));
    }
    None
}

/// `[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?`
fn is_label_name_shape(s: &str) -> bool {
    let bytes = s.as_bytes();
    let (Some(first), Some(last)) = (bytes.first(), bytes.last()) else {
        return false;
    };
    first.is_ascii_alphanumeric()
        && last.is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Why `s` is not a DNS-1123 subdomain (lower-case RFC 1123 labels joined by dots, <= 253).
pub fn dns1123_subdomain_error(s: &str) -> Option<String> {
    if s.is_empty() {
        return Some("must be non-empty".into());
    }
    if s.len() > MAX_PREFIX_LEN {
        return Some(format!("must be no more than {MAX_PREFIX_LEN} characters"));
    }
    let valid = s.split('.').all(|label| {
        let b = label.as_bytes();
        matches!((b.first(), b.last()), (Some(f), Some(l))
            if (f.is_ascii_lowercase() || f.is_ascii_digit()) && (l.is_ascii_lowercase() || l.is_ascii_digit()))
            && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
    });
    if valid {
        None
    } else {
        Some(format!(
            "{s:?} must be a lower-case DNS subdomain: alphanumerics, '-' and '.', \
             starting and ending with an alphanumeric character"
        ))
    }
}

/// Equality-based selection: every selector entry is present in `labels` with that value.
/// An empty selector selects everything, as in Kubernetes `matchLabels`.
pub fn selects(
    selector: &BTreeMap<String, String>,
    labels: Option<&BTreeMap<String, String>>,
) -> bool {
    selects_by(selector, |key| labels?.get(key).map(String::as_str))
}

/// [`selects`] over any label lookup (e.g. labels borrowed from a request body).
pub fn selects_by<'l>(
    selector: &BTreeMap<String, String>,
    label: impl Fn(&str) -> Option<&'l str>,
) -> bool {
    selector
        .iter()
        .all(|(key, want)| label(key) == Some(want.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_and_prefixed_keys() {
        for key in [
            "app",
            "app.kubernetes.io/name",
            "a",
            "A_b-c.d",
            "example.com/x1",
            "x/y",
        ] {
            assert_eq!(label_key_error(key), None, "{key}");
        }
    }

    #[test]
    fn rejects_bad_keys_with_reason() {
        let cases = [
            ("", "name part must be non-empty"),
            ("/app", "prefix part must be non-empty"),
            ("example.com/", "name part must be non-empty"),
            ("-app", "must start and end with an alphanumeric"),
            ("app-", "must start and end with an alphanumeric"),
            ("ap p", "alphanumeric"),
            ("Example.com/app", "lower-case DNS subdomain"),
            ("ex_ample.com/app", "lower-case DNS subdomain"),
            ("a/b/c", "lower-case DNS subdomain"),
        ];
        for (key, want) in cases {
            let got = label_key_error(key).unwrap_or_default();
            assert!(got.contains(want), "{key:?}: {got}");
        }
        let long = "a".repeat(64);
        assert!(label_key_error(&long).unwrap().contains("no more than 63"));
        assert_eq!(label_key_error(&"a".repeat(63)), None);
        let long_prefix = format!("{}/a", "b".repeat(254));
        assert!(
            label_key_error(&long_prefix)
                .unwrap()
                .contains("no more than 253")
        );
    }

    #[test]
    fn values_may_be_empty_but_not_malformed() {
        assert_eq!(label_value_error(""), None);
        assert_eq!(label_value_error("nginx"), None);
        assert_eq!(label_value_error("v1.2_3-x"), None);
        assert!(label_value_error("-x").is_some());
        assert!(label_value_error("a b").is_some());
        assert!(label_value_error("a/b").is_some());
        assert!(label_value_error(&"v".repeat(64)).is_some());
    }

    #[test]
    fn selection_needs_every_entry() {
        let sel: BTreeMap<_, _> = [("app".to_string(), "nginx".to_string())].into();
        let mut labels: BTreeMap<_, _> = [("app".to_string(), "nginx".to_string())].into();
        assert!(selects(&sel, Some(&labels)));
        labels.insert("tier".into(), "web".into());
        assert!(selects(&sel, Some(&labels)));
        labels.insert("app".into(), "redis".into());
        assert!(!selects(&sel, Some(&labels)));
        assert!(!selects(&sel, None));
        assert!(selects(&BTreeMap::new(), None));
    }
}
