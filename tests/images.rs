//! The images `make images` builds (images/build.sh): what each holds, what it says about
//! itself, and that what it holds runs. `make test` builds them first where umoci and skopeo
//! are installed (CI installs them); elsewhere these tests say they skipped, except under
//! `CI=true`, where a missing image fails.
//!
//! Every blob is read back through its digest, so the tests check the bytes a registry would
//! serve. Where this machine can run containers (root and runc), the images also run as
//! containers under the restricted Pod Security profile's settings: non-root, no
//! capabilities, no privilege escalation, a read-only root filesystem.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use prefetch_common::version::{LONG, REVISION, VERSION};
use prefetch_controller::core::pod::{INSTALL_NOOP_COMMAND, NOOP_IMAGE_BINARY};
use prefetch_tests::binaries::{WebhookOptions, WebhookProcess};
use prefetch_tests::cluster::TestCluster;
use prefetch_tests::fixtures::{TempDir, issue_test_certs, prefetch_review, sample_prefetch};
use prefetch_tests::repo;
use prefetch_tests::tls_client::{PinnedClient, Protocol};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// Each image: its name in target/images/, the program its entrypoint runs, and its budget.
struct Expected {
    name: &'static str,
    program: &'static str,
    dockerfile: &'static str,
    budget: Budget,
}

enum Budget {
    /// All layers together, compressed, at most this many bytes.
    Layers(u64),
    /// Manifest, config and layers, compressed: what a node downloads.
    Image(u64),
}

const IMAGES: [Expected; 3] = [
    Expected {
        name: "controller",
        program: "prefetch-controller",
        dockerfile: "Dockerfile.controller",
        budget: Budget::Image(25_000_000),
    },
    Expected {
        name: "webhook",
        program: "prefetch-webhook",
        dockerfile: "Dockerfile.webhook",
        budget: Budget::Image(25_000_000),
    },
    // Every prefetch pod's init container pulls it.
    Expected {
        name: "noop",
        program: "noop",
        dockerfile: "Dockerfile.noop",
        budget: Budget::Layers(16 * 1024),
    },
];

const LABEL: &str = "org.opencontainers.image.";

/// `target/images/` of this build (the test executable lives in `target/<profile>/deps/`).
fn images_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let target = exe
        .ancestors()
        .nth(3)
        .expect("target/<profile>/deps/<test>");
    target.join("images")
}

struct Image {
    expected: &'static Expected,
    config: Value,
    /// Manifest and config sizes, then each layer's compressed size.
    metadata_bytes: u64,
    layers: Vec<PathBuf>,
    layer_bytes: u64,
}

impl Image {
    fn entrypoint(&self) -> String {
        let entrypoint = &self.config["config"]["Entrypoint"];
        assert_eq!(
            entrypoint.as_array().map(Vec::len),
            Some(1),
            "{}: one entrypoint, no wrapper: {entrypoint}",
            self.expected.name
        );
        entrypoint[0].as_str().unwrap().to_owned()
    }

    fn label(&self, key: &str) -> &str {
        self.config["config"]["Labels"][format!("{LABEL}{key}")]
            .as_str()
            .unwrap_or_else(|| panic!("{}: no {LABEL}{key} label", self.expected.name))
    }

    /// Every entry of every layer: path (without the leading `./` or `/`) and whether it is an
    /// executable regular file.
    fn entries(&self) -> BTreeMap<String, tar::EntryType> {
        let mut entries = BTreeMap::new();
        for layer in &self.layers {
            let mut archive = layer_archive(layer);
            for entry in archive.entries().unwrap() {
                let entry = entry.unwrap();
                let path = entry.path().unwrap().display().to_string();
                let path = path.trim_start_matches("./").trim_start_matches('/');
                if !path.is_empty() {
                    entries.insert(path.to_owned(), entry.header().entry_type());
                }
            }
        }
        entries
    }

    /// The image's files under `dest`, as a runtime would lay them out.
    fn unpack(&self, dest: &Path) {
        for layer in &self.layers {
            layer_archive(layer).unpack(dest).unwrap();
        }
    }
}

/// A layer's tar. Multi-member gzip: umoci compresses in parallel, one member per block.
fn layer_archive(path: &Path) -> tar::Archive<flate2::read::MultiGzDecoder<std::fs::File>> {
    tar::Archive::new(flate2::read::MultiGzDecoder::new(
        std::fs::File::open(path).unwrap(),
    ))
}

/// The blob a descriptor names, after checking its size and digest.
fn blob(layout: &Path, descriptor: &Value) -> (PathBuf, Vec<u8>) {
    let digest = descriptor["digest"].as_str().unwrap();
    let hex = digest.strip_prefix("sha256:").expect("sha256 digests");
    let path = layout.join("blobs/sha256").join(hex);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(Some(bytes.len() as u64), descriptor["size"].as_u64());
    assert_eq!(format!("{:x}", Sha256::digest(&bytes)), hex, "{digest}");
    (path, bytes)
}

fn load(expected: &'static Expected) -> Option<Image> {
    let layout = images_dir().join(expected.name);
    let index = std::fs::read(layout.join("index.json")).ok()?;
    let index: Value = serde_json::from_slice(&index).unwrap();
    let manifest_descriptor = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == VERSION)
        .unwrap_or_else(|| panic!("{}: no manifest tagged {VERSION}", expected.name));
    let (_, manifest) = blob(&layout, manifest_descriptor);
    let manifest: Value = serde_json::from_slice(&manifest).unwrap();
    let (_, config) = blob(&layout, &manifest["config"]);
    let mut layers = Vec::new();
    let mut layer_bytes = 0;
    for layer in manifest["layers"].as_array().unwrap() {
        assert_eq!(
            layer["mediaType"], "application/vnd.oci.image.layer.v1.tar+gzip",
            "{}",
            expected.name
        );
        layer_bytes += layer["size"].as_u64().unwrap();
        layers.push(blob(&layout, layer).0);
    }
    Some(Image {
        expected,
        config: serde_json::from_slice(&config).unwrap(),
        metadata_bytes: manifest_descriptor["size"].as_u64().unwrap()
            + manifest["config"]["size"].as_u64().unwrap(),
        layers,
        layer_bytes,
    })
}

fn named<'a>(images: &'a [Image], name: &str) -> &'a Image {
    images
        .iter()
        .find(|image| image.expected.name == name)
        .unwrap_or_else(|| panic!("no {name} image"))
}

/// The three images, or `None` (having said why) where `make images` did not run.
fn built_images() -> Option<Vec<Image>> {
    let images: Option<Vec<Image>> = IMAGES.iter().map(load).collect();
    if images.is_none() {
        let dir = images_dir();
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "no images in {}: CI must run `make images` (umoci, skopeo) before the tests",
            dir.display()
        );
        eprintln!(
            "SKIPPED: no images in {}; run `make images` (needs umoci and skopeo: apt-get install umoci skopeo)",
            dir.display()
        );
    }
    images
}

#[test]
fn each_image_runs_as_a_numeric_non_root_user_and_says_what_it_is() {
    let Some(images) = built_images() else { return };
    let workspace = std::fs::read_to_string(repo::root().join("Cargo.toml")).unwrap();
    for image in &images {
        let name = image.expected.name;
        assert_eq!(image.config["os"], "linux", "{name}");
        let user = image.config["config"]["User"].as_str().unwrap_or_default();
        let uid = user.split(':').next().unwrap_or_default();
        assert!(
            uid.parse::<u32>().is_ok_and(|uid| uid != 0)
                && user.split(':').all(|id| id.parse::<u32>().is_ok()),
            "{name}: the user must be a numeric non-root uid[:gid] (runAsNonRoot checks it): {user:?}"
        );
        assert!(image.entrypoint().starts_with('/'), "{name}");
        assert_eq!(image.label("title"), format!("kube-prefetch-{name}"));
        assert_eq!(image.label("version"), VERSION, "{name}");
        assert_eq!(
            image.label("revision"),
            REVISION,
            "{name}: the image was built from another commit than the tests; run `make images`"
        );
        assert_ne!(
            REVISION, "unknown",
            "built outside git: no revision to label"
        );
        assert!(
            workspace.contains(&format!("repository = \"{}\"", image.label("source"))),
            "{name}: the source label must be Cargo.toml's repository"
        );
        assert!(
            workspace.contains(&format!("license = \"{}\"", image.label("licenses"))),
            "{name}: the licenses label must be Cargo.toml's license"
        );
    }
}

#[test]
fn no_image_holds_a_shell_or_anything_but_its_program() {
    let Some(images) = built_images() else { return };
    for image in &images {
        let name = image.expected.name;
        let entrypoint = image.entrypoint();
        let entries = image.entries();
        for (path, kind) in &entries {
            let file = path.rsplit('/').next().unwrap_or(path);
            assert!(
                !["sh", "bash", "dash", "ash", "busybox", "zsh"].contains(&file),
                "{name} holds a shell: {path}"
            );
            // Besides the entrypoint: only the shared libraries it loads, a few /etc files,
            // the CA bundle and the empty /tmp.
            let allowed = path == entrypoint.trim_start_matches('/')
                || file.contains(".so")
                || [
                    "etc/passwd",
                    "etc/group",
                    "etc/nsswitch.conf",
                    "etc/ssl/certs/ca-certificates.crt",
                ]
                .contains(&path.as_str())
                || kind.is_dir();
            assert!(allowed, "{name}: unexpected {path} ({kind:?})");
        }
        assert!(
            entries.contains_key(entrypoint.trim_start_matches('/')),
            "{name}: the entrypoint {entrypoint} is not in the image"
        );
        if name == "noop" {
            assert_eq!(entries.len(), 1, "the noop image is one file: {entries:?}");
            // Where the prefetch pods' init container runs it.
            assert_eq!(entrypoint, NOOP_IMAGE_BINARY);
            assert_eq!(INSTALL_NOOP_COMMAND[0], NOOP_IMAGE_BINARY);
        }
    }
}

#[test]
fn images_fit_their_size_budgets() {
    let Some(images) = built_images() else { return };
    for image in &images {
        let name = image.expected.name;
        let total = image.metadata_bytes + image.layer_bytes;
        eprintln!(
            "{name}: layers {} bytes, image {total} bytes",
            image.layer_bytes
        );
        match image.expected.budget {
            Budget::Layers(limit) => assert!(
                image.layer_bytes <= limit,
                "{name}: layers {} bytes > {limit}",
                image.layer_bytes
            ),
            Budget::Image(limit) => {
                assert!(total <= limit, "{name}: image {total} bytes > {limit}")
            }
        }
    }
}

/// The archive `kind load image-archive` takes names the image as the install does, and only so:
/// the kubelet reports any one of an image's names in a pod's status.
#[test]
fn each_archive_for_kind_carries_the_name_the_install_uses() {
    let Some(images) = built_images() else { return };
    for image in &images {
        let name = image.expected.name;
        let path = images_dir().join(format!("{name}.tar"));
        let mut archive = tar::Archive::new(std::fs::File::open(&path).unwrap());
        let mut manifest = None;
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            if entry.path().unwrap().as_os_str() == "manifest.json" {
                let mut text = String::new();
                std::io::Read::read_to_string(&mut entry, &mut text).unwrap();
                manifest = Some(serde_json::from_str::<Value>(&text).unwrap());
            }
        }
        let manifest = manifest.unwrap_or_else(|| panic!("{}: no manifest.json", path.display()));
        assert_eq!(
            manifest[0]["RepoTags"],
            json!([format!("ghcr.io/kainlite/kube-prefetch-{name}:{VERSION}")]),
            "{name}"
        );
    }
}

/// How to run `binary` (inside `root`) with the libraries of `root`, not the machine's: its
/// ELF loader from the image, told to ignore the machine's cache and search only the image's
/// library directories. A static binary (noop) runs as it is.
fn command_in(root: &Path, binary: &str) -> Vec<OsString> {
    let binary = root.join(binary.trim_start_matches('/'));
    let mut loader = None;
    let mut library_dirs = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let file = path.file_name().unwrap().to_string_lossy().into_owned();
            if path.is_dir() {
                pending.push(path);
            } else if file.starts_with("ld-linux") {
                loader = Some(path);
            } else if file.contains(".so") && !library_dirs.contains(&dir) {
                library_dirs.push(dir.clone());
            }
        }
    }
    let Some(loader) = loader else {
        return vec![binary.into_os_string()];
    };
    let library_path = std::env::join_paths(&library_dirs).unwrap();
    vec![
        loader.into_os_string(),
        "--inhibit-cache".into(),
        "--library-path".into(),
        library_path,
        binary.into_os_string(),
    ]
}

fn run(command: &[OsString], args: &[&str]) -> Output {
    Command::new(&command[0])
        .args(&command[1..])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn version_line(program: &str) -> String {
    format!("{program} {LONG}")
}

#[test]
fn the_entrypoint_taken_out_of_each_image_reports_its_version_and_revision() {
    let Some(images) = built_images() else { return };
    for image in &images {
        let root = TempDir::new(&format!("prefetch-image-{}", image.expected.name)).unwrap();
        image.unpack(root.path());
        let output = run(
            &command_in(root.path(), &image.entrypoint()),
            &["--version"],
        );
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{}: {output:?}",
            image.expected.name
        );
        assert_eq!(stdout.trim(), version_line(image.expected.program));
    }
}

/// The webhook answers an AdmissionReview over TLS, trusting only the CA in `certs`: the
/// sample Prefetch is allowed and defaulted.
async fn assert_answers_admission(webhook: &WebhookProcess, certs: &Path) {
    let ca = std::fs::read(certs.join("ca.crt")).unwrap();
    let client =
        PinnedClient::new(&ca, webhook.admission_addr, "127.0.0.1", Protocol::Http1).unwrap();
    let review = prefetch_review("u1", "CREATE", sample_prefetch("default"), Value::Null);
    let reply = client
        .post(
            "/mutate/prefetch",
            "application/json",
            serde_json::to_vec(&review).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(reply.status, 200);
    let body = reply.json().unwrap();
    assert_eq!(body["response"]["uid"], "u1");
    assert_eq!(body["response"]["allowed"], true, "{body}");
    assert_eq!(body["response"]["patchType"], "JSONPatch", "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_from_its_image_answers_an_admission_review_over_tls() {
    let Some(images) = built_images() else { return };
    let image = named(&images, "webhook");
    let cluster = TestCluster::start("image-webhook").await.unwrap();
    let root = cluster.dir.path().join("rootfs");
    image.unpack(&root);
    let entrypoint = image.entrypoint();
    let certs = issue_test_certs(&cluster.dir.path().join("certs")).unwrap();
    let webhook = WebhookProcess::start(WebhookOptions {
        echo_logs: true,
        launcher: Some(Box::new(move |args: &[String]| {
            let mut command = command_in(&root, &entrypoint);
            command.extend(args.iter().map(OsString::from));
            command
        })),
        ..WebhookOptions::with_cert_dir(&cluster.kubeconfig, &certs)
    })
    .await
    .expect("the webhook from the image starts and gets ready");
    assert_answers_admission(&webhook, &certs).await;
}

#[test]
fn the_dockerfiles_give_the_images_the_same_config() {
    let Some(images) = built_images() else { return };
    for image in &images {
        let dockerfile =
            std::fs::read_to_string(repo::root().join(image.expected.dockerfile)).unwrap();
        let joined = dockerfile.replace("\\\n", " ");
        let instruction = |name: &str| {
            joined
                .lines()
                .rev()
                .find_map(|line| line.strip_prefix(name))
                .map(str::trim)
                .unwrap_or_else(|| panic!("{}: no {name}", image.expected.dockerfile))
                .to_owned()
        };
        let name = image.expected.dockerfile;
        assert_eq!(
            instruction("USER "),
            image.config["config"]["User"].as_str().unwrap(),
            "{name}"
        );
        assert_eq!(
            serde_json::from_str::<Value>(&instruction("ENTRYPOINT ")).unwrap(),
            image.config["config"]["Entrypoint"],
            "{name}"
        );
        assert_eq!(instruction("FROM "), "scratch", "{name}: the final stage");
        assert!(
            joined.contains(&format!("ARG VERSION={VERSION}")),
            "{name}: ARG VERSION must default to {VERSION}"
        );
        // Every label the image has, with the same value (version and revision from ARGs).
        for (key, value) in image.config["config"]["Labels"].as_object().unwrap() {
            let expected = match key.strip_prefix(LABEL) {
                Some("version") => "\"$VERSION\"".to_owned(),
                Some("revision") => "\"$REVISION\"".to_owned(),
                _ => format!("\"{}\"", value.as_str().unwrap()),
            };
            assert!(
                joined.contains(&format!("{key}={expected}")),
                "{name}: LABEL {key}={expected} missing"
            );
        }
        assert!(
            joined.contains("images/rootfs.sh"),
            "{name}: lays out the files with images/rootfs.sh, as make images does"
        );
    }
}

mod container {
    //! The images run as containers by runc, as the kubelet's runtime would run them, where
    //! this machine can (root, runc on PATH).

    use super::*;

    /// Why containers cannot run here, if they cannot.
    fn unavailable() -> Option<String> {
        let uid = Command::new("id").arg("-u").output().ok()?;
        if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
            return Some("not root".into());
        }
        match Command::new("runc").arg("--version").output() {
            Ok(out) if out.status.success() => None,
            _ => Some("runc is not installed (apt-get install runc)".into()),
        }
    }

    /// Rewrites the runtime config (`config.json`) of the bundle in `dir`.
    fn edit_config(dir: &Path, change: impl FnOnce(&mut Value)) {
        let path = dir.join("config.json");
        let mut config: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        change(&mut config);
        std::fs::write(&path, config.to_string()).unwrap();
    }

    /// A runc bundle of `image`: its files, and a runtime config with the restricted profile's
    /// settings and the image's user.
    struct Bundle {
        dir: TempDir,
        id: String,
    }

    impl Bundle {
        fn new(image: &Image, args: &[&str]) -> Self {
            let dir = TempDir::new(&format!("prefetch-bundle-{}", image.expected.name)).unwrap();
            image.unpack(&dir.path().join("rootfs"));
            let spec = Command::new("runc")
                .args(["spec", "--bundle"])
                .arg(dir.path())
                .output()
                .unwrap();
            assert!(spec.status.success(), "runc spec: {spec:?}");
            let user = image.config["config"]["User"].as_str().unwrap();
            let (uid, gid) = user.split_once(':').unwrap_or((user, user));
            let mut process_args = vec![image.entrypoint()];
            process_args.extend(args.iter().map(|a| a.to_string()));
            edit_config(dir.path(), |config| {
                let process = &mut config["process"];
                process["terminal"] = json!(false);
                process["args"] = json!(process_args);
                process["user"] =
                    json!({"uid": uid.parse::<u32>().unwrap(), "gid": gid.parse::<u32>().unwrap()});
                process["noNewPrivileges"] = json!(true);
                process["capabilities"] = json!({"bounding": [], "effective": [], "permitted": [], "inheritable": [], "ambient": []});
                config["root"]["readonly"] = json!(true);
            });
            let id = format!(
                "prefetch-test-{}-{}",
                image.expected.name,
                dir.path().file_name().unwrap().to_string_lossy()
            );
            Self { dir, id }
        }

        fn edit(&self, change: impl FnOnce(&mut Value)) {
            edit_config(self.dir.path(), change);
        }

        /// Mounts `host` at `path` in the container.
        fn mount(&self, host: &Path, path: &str, read_only: bool) {
            let options = if read_only {
                json!(["bind", "ro"])
            } else {
                json!(["bind", "rw"])
            };
            self.edit(|config| {
                config["mounts"].as_array_mut().unwrap().push(json!({
                    "destination": path, "type": "bind", "source": host, "options": options
                }));
            });
        }

        /// Runs in the machine's network namespace, so it can reach 127.0.0.1.
        fn share_host_network(&self) {
            self.edit(|config| {
                config["linux"]["namespaces"]
                    .as_array_mut()
                    .unwrap()
                    .retain(|ns| ns["type"] != "network");
            });
        }

        fn set_env(&self, name: &str, value: &str) {
            self.edit(|config| {
                config["process"]["env"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!(format!("{name}={value}")));
            });
        }

        fn run_command_of(dir: &Path, id: &str) -> Vec<OsString> {
            ["runc", "run", "--bundle"]
                .map(OsString::from)
                .into_iter()
                .chain([dir.as_os_str().to_owned(), id.into()])
                .collect()
        }

        fn run(&self) -> Output {
            run(&Self::run_command_of(self.dir.path(), &self.id), &[])
        }
    }

    impl Drop for Bundle {
        fn drop(&mut self) {
            // A killed `runc run` leaves its container behind.
            let _ = Command::new("runc")
                .args(["delete", "--force", &self.id])
                .output();
        }
    }

    fn images_or_skip() -> Option<Vec<Image>> {
        if let Some(why) = unavailable() {
            eprintln!("SKIPPED: cannot run containers here ({why}); the images were not run");
            return None;
        }
        built_images()
    }

    #[test]
    fn each_image_runs_as_a_restricted_container() {
        let Some(images) = images_or_skip() else {
            return;
        };
        for image in &images {
            let output = Bundle::new(image, &["--version"]).run();
            assert!(
                output.status.success(),
                "{}: {output:?}",
                image.expected.name
            );
            assert_eq!(
                String::from_utf8_lossy(&output.stdout).trim(),
                version_line(image.expected.program)
            );
        }
    }

    /// What a prefetch pod does: the init container copies noop into an emptyDir, and each
    /// image's container then runs that copy, as the noop image's uid.
    #[test]
    fn noop_installs_itself_and_its_copy_runs_as_a_prefetch_pod_would() {
        let Some(images) = images_or_skip() else {
            return;
        };
        let noop = named(&images, "noop");
        let empty_dir = TempDir::new("prefetch-empty-dir").unwrap();
        let chmod = Command::new("chmod")
            .arg("1777")
            .arg(empty_dir.path())
            .status()
            .unwrap();
        assert!(chmod.success());
        let init = Bundle::new(noop, &["--install-to", "/prefetch/noop"]);
        init.mount(empty_dir.path(), "/prefetch", false);
        let output = init.run();
        assert!(output.status.success(), "init container: {output:?}");
        let copy = empty_dir.path().join("noop");
        let mode = std::os::unix::fs::PermissionsExt::mode(&copy.metadata().unwrap().permissions());
        assert_eq!(mode & 0o777, 0o755);

        let container = Bundle::new(noop, &[]);
        container.mount(empty_dir.path(), "/prefetch", true);
        container.edit(|config| {
            config["process"]["args"] = json!(["/prefetch/noop", "any", "arguments"]);
        });
        let output = container.run();
        assert!(output.status.success(), "prefetch container: {output:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_webhook_container_answers_an_admission_review_over_tls() {
        let Some(images) = images_or_skip() else {
            return;
        };
        let image = named(&images, "webhook");
        let cluster = TestCluster::start("image-webhook-container").await.unwrap();
        let certs = issue_test_certs(&cluster.dir.path().join("certs")).unwrap();
        let config_dir = cluster.dir.path().join("config");
        std::fs::create_dir_all(&config_dir).unwrap();
        std::fs::copy(&cluster.kubeconfig, config_dir.join("kubeconfig")).unwrap();
        for file in ["tls.crt", "tls.key"] {
            std::fs::copy(certs.join(file), config_dir.join(file)).unwrap();
        }
        // The container's user reads them, as it would a mounted Secret.
        let chmod = Command::new("chmod")
            .args(["-R", "a+rX"])
            .arg(&config_dir)
            .status()
            .unwrap();
        assert!(chmod.success());

        let bundle = Bundle::new(image, &[]);
        bundle.mount(&config_dir, "/config", true);
        bundle.share_host_network();
        bundle.set_env("KUBECONFIG", "/config/kubeconfig");
        let launch_in = bundle.dir.path().to_path_buf();
        let id = bundle.id.clone();
        let webhook = WebhookProcess::start(WebhookOptions {
            echo_logs: true,
            // The webhook's arguments go into the container's process, not runc's.
            launcher: Some(Box::new(move |args: &[String]| {
                edit_config(&launch_in, |config| {
                    let process_args = config["process"]["args"].as_array_mut().unwrap();
                    process_args.extend(args.iter().map(|a| json!(a)));
                });
                Bundle::run_command_of(&launch_in, &id)
            })),
            ..WebhookOptions::with_cert_dir(&cluster.kubeconfig, Path::new("/config"))
        })
        .await
        .expect("the webhook container starts and gets ready");
        assert_answers_admission(&webhook, &certs).await;
        drop(webhook);
        drop(bundle);
    }
}
