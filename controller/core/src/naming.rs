//! Deterministic prefetch pod names: the same Prefetch and node always give the same name, so
//! a restarted controller finds its pods instead of creating duplicates (a second create gets
//! 409 AlreadyExists).

/// Kubernetes object names used as DNS labels are at most 63 characters.
pub const MAX_POD_NAME: usize = 63;
const PREFIX: &str = "prefetch-";

/// `prefetch-<prefetch>-<node>`, lower-cased to a DNS label; when that is too long, shortened
/// with a hash of the full pair so distinct pairs keep distinct names.
pub fn pod_name(prefetch: &str, node: &str) -> String {
    let full = sanitize(&format!("{PREFIX}{prefetch}-{node}"));
    if full.len() <= MAX_POD_NAME && full == format!("{PREFIX}{prefetch}-{node}") {
        return full;
    }
    // 10 hex digits of FNV-1a over the exact pair: stable across builds and platforms.
    let hash = format!(
        "{:010x}",
        fnv1a(format!("{prefetch}\0{node}").as_bytes()) & 0xff_ffff_ffff
    );
    let keep = MAX_POD_NAME - hash.len() - 1;
    let head: String = full.chars().take(keep).collect();
    format!("{}-{hash}", head.trim_end_matches(['-', '.']))
}

/// Lower-case alphanumerics and '-': node names may contain '.', which pod names allow but
/// which we avoid so the name is also a valid DNS label.
fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect()
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_dns_label(s: &str) -> bool {
        !s.is_empty()
            && s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !s.starts_with('-')
            && !s.ends_with('-')
    }

    #[test]
    fn short_names_read_plainly() {
        assert_eq!(
            pod_name("prefetch-sample", "kind-worker"),
            "prefetch-prefetch-sample-kind-worker"
        );
    }

    #[test]
    fn names_are_deterministic_valid_and_distinct() {
        let long_node =
            "ip-10-0-123-45.eu-west-1.compute.internal.example-cluster-with-a-long-name";
        let cases = [
            ("prefetch-sample", "kind-worker"),
            ("web", long_node),
            ("web", &long_node.replace("45", "46")),
            (
                "a-very-long-prefetch-name-that-keeps-going-and-going-on",
                "node-1",
            ),
            (
                "a-very-long-prefetch-name-that-keeps-going-and-going-on",
                "node-2",
            ),
            ("web", "node.with.dots"),
            ("web", "node-with-dots"),
        ];
        let names: Vec<String> = cases.iter().map(|(p, n)| pod_name(p, n)).collect();
        for ((p, n), name) in cases.iter().zip(&names) {
            assert!(is_dns_label(name), "{name:?} from ({p}, {n})");
            assert_eq!(&pod_name(p, n), name, "deterministic");
        }
        let unique: std::collections::BTreeSet<&String> = names.iter().collect();
        assert_eq!(
            unique.len(),
            names.len(),
            "distinct pairs get distinct names: {names:?}"
        );
    }

    #[test]
    fn hash_is_stable_across_builds() {
        // Pinned: a change here would orphan every running cluster's prefetch pods.
        assert_eq!(
            pod_name("web", "node.with.dots"),
            "prefetch-web-node-with-dots-e13c0b7ae7"
        );
        // FNV-1a 64's published test vectors: the hash is the standard one, not an accident.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
    }
}
