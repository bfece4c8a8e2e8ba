//! Container image references, normalized the way the kubelet and containerd name them
//! (`nginx:1.7.9` -> `docker.io/library/nginx:1.7.9`), and the images of a pod template.
//!
//! Grammar: github.com/distribution/reference. Normalizing lets the controller compare a
//! Deployment's images with the names a node reports in `status.images`, and lets the
//! webhook tell a real image change from a respelling (`nginx` vs `docker.io/library/nginx:latest`).

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use k8s_openapi::api::core::v1::PodSpec;

const DEFAULT_DOMAIN: &str = "docker.io";
const LEGACY_DEFAULT_DOMAIN: &str = "index.docker.io";
const OFFICIAL_REPO_PREFIX: &str = "library/";
const MAX_NAME_LEN: usize = 255;
const MAX_TAG_LEN: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageRefError {
    #[error("image reference is empty")]
    Empty,
    #[error("invalid image reference {reference:?}: {reason}")]
    Invalid {
        reference: String,
        reason: &'static str,
    },
}

/// A parsed, normalized image reference. `Display` gives the canonical form.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ImageRef {
    /// Registry host, with port if any (`docker.io`, `registry.local:5000`).
    pub domain: String,
    /// Repository path (`library/nginx`).
    pub path: String,
    /// Tag; `latest` when the reference had neither tag nor digest.
    pub tag: Option<String>,
    /// `algorithm:hex`.
    pub digest: Option<String>,
}

/// A reference split into its normalized parts, borrowed from the reference: what both
/// [`ImageRef::parse`] and [`normalize`] build from, so that normalizing allocates only the
/// canonical string.
struct Parts<'a> {
    /// `docker.io` when the reference names no registry (or the legacy `index.docker.io`).
    domain: &'a str,
    /// An official Docker Hub image: the path gets the `library/` prefix.
    official: bool,
    path: &'a str,
    /// `latest` when the reference had neither tag nor digest.
    tag: Option<&'a str>,
    digest: Option<&'a str>,
}

impl<'a> Parts<'a> {
    fn parse(reference: &'a str) -> Result<Self, ImageRefError> {
        let reference = reference.trim();
        if reference.is_empty() {
            return Err(ImageRefError::Empty);
        }
        let invalid = |reason| ImageRefError::Invalid {
            reference: reference.to_string(),
            reason,
        };

        let (rest, digest) = match reference.split_once('@') {
            Some((rest, digest)) => {
                if !is_valid_digest(digest) {
                    return Err(invalid(
                        "digest must be algorithm:hex with at least 32 hex digits",
                    ));
                }
                (rest, Some(digest))
            }
            None => (reference, None),
        };
        // A ':' after the last '/' starts the tag; an earlier one is a registry port.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].find(':') {
            Some(i) => {
                let (name, tag) = rest.split_at(last_slash + i);
                (name, Some(&tag[1..]))
            }
            None => (rest, None),
        };
        if let Some(tag) = tag
            && !is_valid_tag(tag)
        {
            return Err(invalid(
                "tag must be 1-128 of [A-Za-z0-9_.-], not starting with '.' or '-'",
            ));
        }
        if name.is_empty() {
            return Err(invalid("repository name is empty"));
        }
        if name.len() > MAX_NAME_LEN {
            return Err(invalid("repository name must be at most 255 characters"));
        }

        let (domain, path) = match name.split_once('/') {
            Some((first, remainder))
                if first.contains(['.', ':']) || first == "localhost" || has_upper_case(first) =>
            {
                (first, remainder)
            }
            _ => (DEFAULT_DOMAIN, name),
        };
        if !is_valid_domain(domain) {
            return Err(invalid(
                "registry must be a host name or IP, with an optional :port",
            ));
        }
        let domain = if domain == LEGACY_DEFAULT_DOMAIN {
            DEFAULT_DOMAIN
        } else {
            domain
        };
        // `library` itself is a valid component: checking the path without it is the same.
        if !path.split('/').all(is_valid_path_component) {
            return Err(invalid(
                "repository path components must be lower-case alphanumerics separated by '.', '_', '__' or '-'",
            ));
        }
        Ok(Parts {
            domain,
            official: domain == DEFAULT_DOMAIN && !path.contains('/'),
            path,
            tag: match (tag, digest) {
                (Some(tag), _) => Some(tag),
                (None, None) => Some("latest"),
                (None, Some(_)) => None,
            },
            digest,
        })
    }

    /// The canonical form, as [`ImageRef`]'s `Display` writes it, in one allocation.
    fn canonical(&self) -> String {
        let optional = |part: Option<&str>| part.map_or(0, |p| p.len() + 1);
        let mut out = String::with_capacity(
            self.domain.len()
                + 1
                + OFFICIAL_REPO_PREFIX.len()
                + self.path.len()
                + optional(self.tag)
                + optional(self.digest),
        );
        out.push_str(self.domain);
        out.push('/');
        if self.official {
            out.push_str(OFFICIAL_REPO_PREFIX);
        }
        out.push_str(self.path);
        if let Some(tag) = self.tag {
            out.push(':');
            out.push_str(tag);
        }
        if let Some(digest) = self.digest {
            out.push('@');
            out.push_str(digest);
        }
        out
    }
}

/// Whether lower-casing `s` changes it (a registry is told from a path component by upper
/// case, which repository paths may not contain), without building the lower-cased copy.
fn has_upper_case(s: &str) -> bool {
    s.chars().flat_map(char::to_lowercase).ne(s.chars())
}

impl ImageRef {
    pub fn parse(reference: &str) -> Result<Self, ImageRefError> {
        let parts = Parts::parse(reference)?;
        Ok(ImageRef {
            domain: parts.domain.to_string(),
            path: if parts.official {
                format!("{OFFICIAL_REPO_PREFIX}{}", parts.path)
            } else {
                parts.path.to_string()
            },
            tag: parts.tag.map(str::to_string),
            digest: parts.digest.map(str::to_string),
        })
    }

    /// The kubelet re-pulls `:latest` (and untagged) images on every start; so must we.
    pub fn pulls_always(&self) -> bool {
        self.tag.as_deref() == Some("latest")
    }

    /// `domain/path`, without tag or digest.
    pub fn repository(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.domain, self.path)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl FromStr for ImageRef {
    type Err = ImageRefError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// The canonical form of `reference` (what `ImageRef::parse(reference)?.to_string()` gives).
pub fn normalize(reference: &str) -> Result<String, ImageRefError> {
    Parts::parse(reference).map(|parts| parts.canonical())
}

/// `[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*`
fn is_valid_path_component(component: &str) -> bool {
    let b = component.as_bytes();
    let alnum = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    if !(b.first().is_some_and(alnum) && b.last().is_some_and(alnum)) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(&b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(&b[i]) {
            i += 1;
        }
        let sep = &component[start..i];
        if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|c| c == b'-')) {
            return false;
        }
    }
    true
}

/// A host name or `[IPv6]`, with an optional numeric port.
fn is_valid_domain(domain: &str) -> bool {
    let (host, port) = if let Some(rest) = domain.strip_prefix('[') {
        match rest.split_once(']') {
            Some((ip, after)) => {
                if ip.is_empty()
                    || !ip
                        .bytes()
                        .all(|c| c.is_ascii_hexdigit() || c == b':' || c == b'.')
                {
                    return false;
                }
                match after.strip_prefix(':') {
                    Some(port) => ("v6", Some(port)),
                    None if after.is_empty() => ("v6", None),
                    None => return false,
                }
            }
            None => return false,
        }
    } else {
        match domain.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (domain, None),
        }
    };
    if let Some(port) = port
        && (port.is_empty() || !port.bytes().all(|c| c.is_ascii_digit()))
    {
        return false;
    }
    host == "v6"
        || host.split('.').all(|label| {
            let b = label.as_bytes();
            matches!((b.first(), b.last()), (Some(f), Some(l)) if f.is_ascii_alphanumeric() && l.is_ascii_alphanumeric())
                && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        })
}

/// `[\w][\w.-]{0,127}`
fn is_valid_tag(tag: &str) -> bool {
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let b = tag.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_TAG_LEN
        && word(b[0])
        && b.iter().all(|&c| word(c) || c == b'.' || c == b'-')
}

/// `algorithm:hex`, algorithm `[A-Za-z][A-Za-z0-9]*([-_+.][A-Za-z][A-Za-z0-9]*)*`, >= 32 hex.
fn is_valid_digest(digest: &str) -> bool {
    let Some((algorithm, hex)) = digest.split_once(':') else {
        return false;
    };
    let algorithm_ok = algorithm.split(['-', '_', '+', '.']).all(|part| {
        let b = part.as_bytes();
        b.first().is_some_and(|c| c.is_ascii_alphabetic())
            && b.iter().all(|c| c.is_ascii_alphanumeric())
    });
    algorithm_ok && hex.len() >= 32 && hex.bytes().all(|c| c.is_ascii_hexdigit())
}

/// The images of a pod template: containers and initContainers, normalized, de-duplicated and
/// sorted. References that do not parse are returned apart, so callers can report them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TemplateImages {
    pub images: BTreeSet<String>,
    pub invalid: Vec<ImageRefError>,
}

pub fn pod_spec_images(spec: &PodSpec) -> TemplateImages {
    collect_images(pod_spec_references(spec))
}

/// The image references of a pod spec as written: containers, init containers, then image
/// volumes (`volumes[].image.reference`: the kubelet pulls them like container images, so a
/// pod that mounts one starts cold without it too).
pub fn pod_spec_references(spec: &PodSpec) -> impl Iterator<Item = &str> {
    container_references(spec).chain(image_volume_references(spec))
}

/// The images of a pod spec's containers and init containers only (see [`pod_spec_images`]).
pub fn pod_spec_container_images(spec: &PodSpec) -> TemplateImages {
    collect_images(container_references(spec))
}

/// The images a pod spec mounts as image volumes only (see [`pod_spec_images`]).
pub fn pod_spec_volume_images(spec: &PodSpec) -> TemplateImages {
    collect_images(image_volume_references(spec))
}

fn container_references(spec: &PodSpec) -> impl Iterator<Item = &str> {
    let init = spec.init_containers.iter().flatten();
    spec.containers
        .iter()
        .chain(init)
        .filter_map(|c| c.image.as_deref())
}

fn image_volume_references(spec: &PodSpec) -> impl Iterator<Item = &str> {
    spec.volumes
        .iter()
        .flatten()
        .filter_map(|v| v.image.as_ref()?.reference.as_deref())
}

/// Same as [`pod_spec_images`] for a pod spec still in JSON (`spec.template.spec` of a
/// Deployment in an admission request), without deserializing the whole object.
pub fn pod_spec_json_images(spec: &serde_json::Value) -> TemplateImages {
    let containers = ["containers", "initContainers"]
        .into_iter()
        .filter_map(|field| spec.get(field)?.as_array())
        .flatten()
        .filter_map(|c| c.get("image")?.as_str());
    let volumes = spec
        .get("volumes")
        .and_then(|v| v.as_array())
        .into_iter()
        .flatten()
        .filter_map(|v| v.get("image")?.get("reference")?.as_str());
    collect_images(containers.chain(volumes))
}

/// Normalizes image references as written in a pod spec (see [`pod_spec_images`]).
pub fn collect_images<'a>(references: impl Iterator<Item = &'a str>) -> TemplateImages {
    let mut out = TemplateImages::default();
    for reference in references {
        match normalize(reference) {
            Ok(image) => {
                out.images.insert(image);
            }
            Err(err) => out.invalid.push(err),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Container;

    const DIGEST: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000abc";

    #[test]
    fn normalizes_like_the_kubelet() {
        let cases = [
            ("nginx:1.7.9", "docker.io/library/nginx:1.7.9".to_string()),
            ("nginx", "docker.io/library/nginx:latest".into()),
            ("nginx:latest", "docker.io/library/nginx:latest".into()),
            ("library/nginx", "docker.io/library/nginx:latest".into()),
            ("docker.io/nginx", "docker.io/library/nginx:latest".into()),
            (
                "index.docker.io/nginx:1",
                "docker.io/library/nginx:1".into(),
            ),
            ("bitnami/redis:7.2", "docker.io/bitnami/redis:7.2".into()),
            (
                "quay.io/prometheus/node-exporter:v1.8.0",
                "quay.io/prometheus/node-exporter:v1.8.0".into(),
            ),
            (
                "registry.local:5000/team/app:2",
                "registry.local:5000/team/app:2".into(),
            ),
            (
                "registry.local:5000/app",
                "registry.local:5000/app:latest".into(),
            ),
            ("localhost/app:dev", "localhost/app:dev".into()),
            ("localhost:5000/app", "localhost:5000/app:latest".into()),
            ("[::1]:5000/app:1", "[::1]:5000/app:1".into()),
            ("10.0.0.1:5000/a/b/c:x", "10.0.0.1:5000/a/b/c:x".into()),
            (
                &format!("nginx@{DIGEST}"),
                format!("docker.io/library/nginx@{DIGEST}"),
            ),
            (
                &format!("nginx:1.25@{DIGEST}"),
                format!("docker.io/library/nginx:1.25@{DIGEST}"),
            ),
            ("ghcr.io/a/b__c.d-e:1_x", "ghcr.io/a/b__c.d-e:1_x".into()),
            ("  nginx:1  ", "docker.io/library/nginx:1".into()),
        ];
        for (input, want) in cases {
            assert_eq!(normalize(input).as_deref(), Ok(want.as_str()), "{input}");
        }
    }

    proptest::proptest! {
        /// `normalize` builds the canonical string from borrowed parts; it must be exactly
        /// what the owned `ImageRef` displays, on valid and invalid references alike.
        #[test]
        fn normalize_is_the_display_of_the_parsed_reference(
            reference in "[a-zA-Z0-9.:/@_\\[\\] -]{0,40}|[a-z.]{1,8}(:[0-9]{1,4})?/[a-z_.-]{1,8}(/[a-zA-Z]{1,4})?(:[a-zA-Z0-9_.-]{0,6})?(@sha256:[0-9a-f]{32})?"
        ) {
            proptest::prop_assert_eq!(
                normalize(&reference),
                ImageRef::parse(&reference).map(|r| r.to_string())
            );
        }
    }

    #[test]
    fn upper_case_is_what_lower_casing_changes() {
        for (s, upper) in [
            ("abc", false),
            ("aBc", true),
            ("\u{3a3}", true),
            ("\u{1c5}", true),
            ("\u{e9}", false),
            ("", false),
        ] {
            assert_eq!(has_upper_case(s), s.to_lowercase() != s, "{s}");
            assert_eq!(has_upper_case(s), upper, "{s}");
        }
    }

    #[test]
    fn normalization_is_idempotent() {
        for input in [
            "nginx",
            "a/b:c",
            "registry.local:5000/x",
            "localhost/y@sha256:0123456789abcdef0123456789abcdef",
        ] {
            let once = normalize(input).unwrap();
            assert_eq!(normalize(&once).unwrap(), once);
        }
    }

    #[test]
    fn rejects_malformed_references() {
        for input in [
            "",
            "   ",
            "Nginx",
            "nginx:",
            "nginx:-bad",
            "nginx:.bad",
            "nginx@sha256:abc",
            "nginx@:0123456789abcdef0123456789abcdef",
            "nginx@sha256:zz23456789abcdef0123456789abcdef",
            "a//b",
            "a/-b",
            "a/b-",
            "a..b",
            "a___b",
            "registry.local:port/app",
            "registry..local/app",
            "-registry.local/app",
            "[::1/app",
            "/app",
            "app/",
        ] {
            assert!(normalize(input).is_err(), "{input:?} should be rejected");
        }
        assert!(normalize(&format!("nginx:{}", "t".repeat(129))).is_err());
        assert!(normalize(&format!("nginx:{}", "t".repeat(128))).is_ok());
        assert!(normalize(&format!("a/{}", "b".repeat(260))).is_err());
    }

    #[test]
    fn error_names_the_reference() {
        let err = normalize("nginx:-bad").unwrap_err().to_string();
        assert!(
            err.contains("\"nginx:-bad\"") && err.contains("tag"),
            "{err}"
        );
    }

    #[test]
    fn latest_and_untagged_pull_always() {
        assert!(ImageRef::parse("nginx").unwrap().pulls_always());
        assert!(ImageRef::parse("nginx:latest").unwrap().pulls_always());
        assert!(!ImageRef::parse("nginx:1").unwrap().pulls_always());
        assert!(
            !ImageRef::parse(&format!("nginx@{DIGEST}"))
                .unwrap()
                .pulls_always()
        );
        assert_eq!(
            ImageRef::parse("nginx:1").unwrap().repository(),
            "docker.io/library/nginx"
        );
    }

    fn container(image: Option<&str>) -> Container {
        Container {
            name: "c".into(),
            image: image.map(Into::into),
            ..Default::default()
        }
    }

    #[test]
    fn template_images_are_deduplicated_sorted_and_include_init_containers() {
        let spec = PodSpec {
            containers: vec![
                container(Some("redis:7")),
                container(Some("nginx:1.7.9")),
                container(Some("docker.io/library/nginx:1.7.9")),
                container(None),
                container(Some("Bad:Ref")),
            ],
            init_containers: Some(vec![container(Some("busybox")), container(Some("redis:7"))]),
            ..Default::default()
        };
        let got = pod_spec_images(&spec);
        assert_eq!(
            got.images.into_iter().collect::<Vec<_>>(),
            [
                "docker.io/library/busybox:latest",
                "docker.io/library/nginx:1.7.9",
                "docker.io/library/redis:7"
            ]
        );
        assert_eq!(got.invalid.len(), 1);
        let json = serde_json::to_value(&spec).unwrap();
        assert_eq!(pod_spec_json_images(&json), pod_spec_images(&spec));
        assert_eq!(
            pod_spec_json_images(&serde_json::json!({"containers": "x"})),
            TemplateImages::default()
        );
    }

    #[test]
    fn image_volumes_are_template_images_too() {
        let json = serde_json::json!({
            "containers": [{"name": "server", "image": "vllm/vllm-openai:v0.9"}],
            "volumes": [
                {"name": "weights", "image": {"reference": "ghcr.io/org/llama-weights:3.1", "pullPolicy": "IfNotPresent"}},
                {"name": "scratch", "emptyDir": {}}
            ]
        });
        let spec: PodSpec = serde_json::from_value(json.clone()).unwrap();
        let got = pod_spec_images(&spec);
        assert_eq!(
            got.images.iter().collect::<Vec<_>>(),
            [
                "docker.io/vllm/vllm-openai:v0.9",
                "ghcr.io/org/llama-weights:3.1"
            ]
        );
        assert_eq!(pod_spec_json_images(&json), got);
    }
}
