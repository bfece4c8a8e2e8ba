//! `make demo`: kube-prefetch's admission webhook end to end with no cluster at hand.
//!
//! Starts a stand-in API server (the test one) and the real `prefetch-webhook` binary on
//! 127.0.0.1 with throwaway certificates, sends it what a cluster would, and prints what it
//! decided: defaults patched in, validation errors, and the rollout signal on a Deployment.

use std::time::Duration;

use base64::Engine;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::PostParams;
use prefetch_common::Prefetch;
use prefetch_tests::apiserver::TestApiServer;
use prefetch_tests::binaries::{WebhookOptions, WebhookProcess};
use prefetch_tests::cluster::client_for;
use prefetch_tests::fixtures::{
    TempDir, deployment_review, issue_test_certs, nginx_deployment, prefetch, prefetch_review,
    sample_prefetch,
};
use prefetch_tests::tls_client::{PinnedClient, Protocol, install_crypto_provider};
use serde_json::{Value, json};

/// ANSI styling, only when printing to a terminal.
fn style(code: &str, text: &str) -> String {
    use std::io::IsTerminal;
    if std::io::stdout().is_terminal() {
        format!("\x1b[{code}m{text}\x1b[0m")
    } else {
        text.to_string()
    }
}

fn heading(n: usize, title: &str) {
    println!("\n{}", style("1", &format!("{n}. {title}")));
}

fn show_sent(label: &str, value: &Value) {
    println!("   sent     {label}: {}", value);
}

/// Prints the webhook's answer: allowed or denied, the patch decoded, warnings.
fn show_answer(response: &Value) {
    let allowed = response["allowed"].as_bool().unwrap_or(false);
    if allowed {
        println!("   answer   {}", style("32", "ALLOWED"));
    } else {
        println!(
            "   answer   {} (status {} {})",
            style("31", "DENIED"),
            response["status"]["code"],
            response["status"]["reason"].as_str().unwrap_or("")
        );
        let message = response["status"]["message"].as_str().unwrap_or("");
        let (head, rest) = message.split_once(": ").unwrap_or(("", message));
        println!("            {head}:");
        for violation in rest.split("; ") {
            println!("              - {violation}");
        }
    }
    match response.get("patch").and_then(Value::as_str) {
        Some(encoded) => {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .unwrap_or_default();
            let ops: Vec<Value> = serde_json::from_slice(&decoded).unwrap_or_default();
            println!(
                "   patch    ({} op(s), JSONPatch, sent base64-encoded)",
                ops.len()
            );
            for op in ops {
                println!(
                    "              {} {} = {}",
                    op["op"].as_str().unwrap_or("?"),
                    op["path"].as_str().unwrap_or("?"),
                    op["value"]
                );
            }
        }
        None if allowed => println!("   patch    none"),
        None => {}
    }
    if let Some(warnings) = response.get("warnings").and_then(Value::as_array) {
        for w in warnings {
            println!("   warning  {}", w.as_str().unwrap_or(""));
        }
    }
}

async fn send(client: &PinnedClient, path: &str, review: &Value) -> anyhow::Result<Value> {
    let reply = client
        .post(path, "application/json", serde_json::to_vec(review)?)
        .await?;
    anyhow::ensure!(
        reply.status == 200,
        "{path} answered HTTP {}: {}",
        reply.status,
        String::from_utf8_lossy(&reply.body)
    );
    Ok(reply.json()?["response"].clone())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    install_crypto_provider();
    let dir = TempDir::new("prefetch-demo")?;
    println!("kube-prefetch demo: the admission webhook, no cluster needed");
    println!("   (a stand-in API server on 127.0.0.1 feeds the webhook's Prefetch watch cache)");

    let api = TestApiServer::start().await?;
    let kubeconfig = dir.path().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig)?;
    let client_api = client_for(&kubeconfig).await?;
    let nodes: Api<Node> = Api::all(client_api.clone());
    for name in [
        "kind-control-plane",
        "kind-worker",
        "kind-worker2",
        "kind-worker3",
    ] {
        nodes
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": name}}))?,
            )
            .await?;
    }
    println!(
        "   cluster  stand-in API server {} with nodes kind-control-plane, kind-worker, kind-worker2, kind-worker3",
        api.url()
    );
    let certs = issue_test_certs(&dir.path().join("certs"))?;
    let webhook = WebhookProcess::start(WebhookOptions::with_cert_dir(&kubeconfig, &certs)).await?;
    println!(
        "   webhook  https://{} (CA pinned: {}), metrics http://{}/metrics",
        webhook.admission_addr,
        certs.join("ca.crt").display(),
        webhook.ops_addr
    );
    let client = PinnedClient::new(
        &std::fs::read(certs.join("ca.crt"))?,
        webhook.admission_addr,
        "127.0.0.1",
        Protocol::Http1,
    )?;

    heading(
        1,
        "kubectl apply of the original sample Prefetch -> POST /mutate/prefetch (defaulting)",
    );
    let sample = sample_prefetch("default");
    show_sent("spec", &sample["spec"]);
    let response = send(
        &client,
        "/mutate/prefetch",
        &prefetch_review("demo-1", "CREATE", sample.clone(), Value::Null),
    )
    .await?;
    show_answer(&response);

    heading(2, "the same object -> POST /validate/prefetch");
    let response = send(
        &client,
        "/validate/prefetch",
        &prefetch_review("demo-2", "CREATE", sample.clone(), Value::Null),
    )
    .await?;
    show_answer(&response);

    heading(
        3,
        "an invalid Prefetch -> POST /validate/prefetch (every violation, by field)",
    );
    let invalid = prefetch(
        "default",
        "broken",
        json!({"filter_by_labels": {}, "retry_after": 5, "node_filter": "Worker_1", "max_parallel": 0}),
    );
    show_sent("spec", &invalid["spec"]);
    let response = send(
        &client,
        "/validate/prefetch",
        &prefetch_review("demo-3", "CREATE", invalid, Value::Null),
    )
    .await?;
    show_answer(&response);

    heading(
        4,
        "a legal but suspicious Prefetch -> POST /validate/prefetch (warning)",
    );
    let odd = prefetch(
        "default",
        "typo",
        json!({"filter_by_labels": {"app": "nginx"}, "node_filter": "wroker", "retry_afer": 60}),
    );
    show_sent("spec", &odd["spec"]);
    let response = send(
        &client,
        "/validate/prefetch",
        &prefetch_review("demo-4", "CREATE", odd, Value::Null),
    )
    .await?;
    show_answer(&response);

    heading(
        5,
        "the sample Prefetch is created; the nginx Deployment rolls out nginx:1.27 -> nginx:1.28",
    );
    let prefetches: Api<Prefetch> = Api::namespaced(client_api, "default");
    prefetches
        .create(&PostParams::default(), &serde_json::from_value(sample)?)
        .await?;
    let old = nginx_deployment("default", "nginx", json!({"app": "nginx"}), &["nginx:1.27"]);
    let new = nginx_deployment("default", "nginx", json!({"app": "nginx"}), &["nginx:1.28"]);
    println!("   sent     Deployment default/nginx UPDATE, image nginx:1.27 -> nginx:1.28");
    // The webhook learns about the Prefetch from its watch: give the event a moment to land.
    let mut response = Value::Null;
    for _ in 0..100 {
        response = send(
            &client,
            "/mutate/deployment",
            &deployment_review("demo-5", "UPDATE", new.clone(), old.clone()),
        )
        .await?;
        if response.get("patch").is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    show_answer(&response);
    println!(
        "            (metadata annotations only: the pod template is untouched, so no pods restart)"
    );

    heading(
        6,
        "the same Deployment re-applied with its image unchanged -> no signal",
    );
    let response = send(
        &client,
        "/mutate/deployment",
        &deployment_review("demo-6", "UPDATE", new.clone(), new),
    )
    .await?;
    show_answer(&response);

    heading(
        7,
        "the reconciler's plan for the walkthrough cluster: prefetch-controller plan -f examples/cluster.yaml",
    );
    let cluster = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/cluster.yaml");
    let output =
        std::process::Command::new(prefetch_tests::binaries::binary("prefetch-controller")?)
            .arg("plan")
            .arg("-f")
            .arg(&cluster)
            .output()?;
    anyhow::ensure!(
        output.status.success(),
        "plan failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        println!("   {line}");
    }
    Ok(())
}
