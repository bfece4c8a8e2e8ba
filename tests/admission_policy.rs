//! The ValidatingAdmissionPolicy that limits the controller's Node writes (design:
//! docs/src/design.md#warm-nodes), evaluated with a CEL interpreter as the API server would: match
//! constraints, match conditions, variables, validations. The controller's own taint-removal patch
//! must pass; every other change to a Node by the controller must be denied, and nobody else's
//! request is matched at all.

use std::collections::HashMap;

use cel::{Context, Program, Value as Cel};
use k8s_openapi::api::core::v1::Node;
use prefetch_common::annotations::{GATED_NAMESPACE_LABEL, GATED_NAMESPACE_VALUE};
use prefetch_controller::core::gated_namespaces::{apply_body, labelled_selector};
use prefetch_controller::core::warmup::{DEFAULT_WARMUP_TAINT, lift_patch};
use prefetch_tests::manifests::{NAMESPACE, kustomization_resources, manifests_dir};
use prefetch_tests::rollout::install_hooks_at;
use serde_json::{Value, json};

const CONTROLLER: &str = "system:serviceaccount:prefetch-system:prefetch-controller";

struct Policy {
    /// (apiGroups, resources, operations) of each resource rule.
    rules: Vec<(Vec<String>, Vec<String>, Vec<String>)>,
    match_conditions: Vec<Program>,
    variables: Vec<(String, Program)>,
    /// (expression, message or messageExpression).
    validations: Vec<(Program, Message)>,
}

enum Message {
    Text(String),
    Expression(Program),
}

#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    NotMatched,
    Allowed,
    /// The messages of the validations that failed (or "error: ..." when one could not be
    /// evaluated: with failurePolicy Fail, a denial too).
    Denied(Vec<String>),
}

fn compile(expression: &str) -> Program {
    Program::compile(expression).unwrap_or_else(|e| panic!("{expression}: {e:?}"))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(String::from))
        .collect()
}

fn base_documents() -> Vec<prefetch_tests::manifests::Doc> {
    kustomization_resources(&manifests_dir().join("base")).unwrap()
}

fn policy_document() -> Value {
    base_documents()
        .into_iter()
        .find(|d| d.kind == "ValidatingAdmissionPolicy" && d.name == "prefetch-controller")
        .expect("the policy is in the base")
        .value
}

fn load(doc: &Value) -> Policy {
    let spec = &doc["spec"];
    assert_eq!(spec["failurePolicy"], "Fail");
    Policy {
        rules: spec["matchConstraints"]["resourceRules"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    strings(&r["apiGroups"]),
                    strings(&r["resources"]),
                    strings(&r["operations"]),
                )
            })
            .collect(),
        match_conditions: spec["matchConditions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| compile(c["expression"].as_str().unwrap()))
            .collect(),
        variables: spec["variables"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| {
                (
                    v["name"].as_str().unwrap().to_string(),
                    compile(v["expression"].as_str().unwrap()),
                )
            })
            .collect(),
        validations: spec["validations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| {
                let message = match v["messageExpression"].as_str() {
                    Some(e) => Message::Expression(compile(e)),
                    None => Message::Text(v["message"].as_str().unwrap().to_string()),
                };
                (compile(v["expression"].as_str().unwrap()), message)
            })
            .collect(),
    }
}

impl Policy {
    fn review(&self, username: &str, operation: &str, old: &Value, new: &Value) -> Verdict {
        self.review_on("nodes", username, operation, old, new)
    }

    fn review_on(
        &self,
        resource: &str,
        username: &str,
        operation: &str,
        old: &Value,
        new: &Value,
    ) -> Verdict {
        let group = "";
        let matched = self.rules.iter().any(|(groups, resources, operations)| {
            groups.iter().any(|g| g == group || g == "*")
                && resources.iter().any(|r| r == resource || r == "*")
                && operations.iter().any(|o| o == operation || o == "*")
        });
        if !matched {
            return Verdict::NotMatched;
        }
        let mut ctx = Context::default();
        let request = json!({
            "operation": operation,
            "userInfo": {"username": username},
            "resource": {"group": group, "version": "v1", "resource": resource},
            "subResource": "",
        });
        ctx.add_variable("request", request).unwrap();
        ctx.add_variable("object", new.clone()).unwrap();
        ctx.add_variable("oldObject", old.clone()).unwrap();
        for condition in &self.match_conditions {
            match condition.execute(&ctx) {
                Ok(Cel::Bool(true)) => {}
                Ok(Cel::Bool(false)) => return Verdict::NotMatched,
                other => return Verdict::Denied(vec![format!("error: {other:?}")]),
            }
        }
        // Variables are evaluated lazily by the API server: one that fails (oldObject is null
        // on CREATE) only matters to the expressions that reach it.
        let mut variables: HashMap<String, Cel> = HashMap::new();
        for (name, program) in &self.variables {
            ctx.add_variable_from_value("variables", variables.clone());
            if let Ok(value) = program.execute(&ctx) {
                variables.insert(name.clone(), value);
            }
        }
        ctx.add_variable_from_value("variables", variables);
        let mut denied = Vec::new();
        for (program, message) in &self.validations {
            match program.execute(&ctx) {
                Ok(Cel::Bool(true)) => {}
                Ok(Cel::Bool(false)) => denied.push(match message {
                    Message::Text(text) => text.clone(),
                    Message::Expression(e) => match e.execute(&ctx) {
                        Ok(Cel::String(s)) => s.to_string(),
                        other => format!("bad messageExpression: {other:?}"),
                    },
                }),
                other => denied.push(format!("error: {other:?}")),
            }
        }
        if denied.is_empty() {
            Verdict::Allowed
        } else {
            Verdict::Denied(denied)
        }
    }

    fn update(&self, old: &Value, new: &Value) -> Verdict {
        self.review(CONTROLLER, "UPDATE", old, new)
    }
}

/// A node as stored, warming, with a spec and metadata worth protecting.
fn warming_node() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {
            "name": "ip-10-0-1-17", "uid": "u-1", "resourceVersion": "41",
            "creationTimestamp": "2026-11-22T10:00:00Z",
            "labels": {"kubernetes.io/os": "linux", "karpenter.sh/nodepool": "default"},
            "annotations": {"node.alpha.kubernetes.io/ttl": "0"},
            "managedFields": [{"manager": "kubelet", "operation": "Update"}]
        },
        "spec": {
            "podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24"],
            "providerID": "aws:///eu-west-1a/i-0123456789",
            "taints": [
                {"key": "dedicated", "value": "web", "effect": "NoSchedule"},
                {"key": DEFAULT_WARMUP_TAINT, "effect": "NoSchedule"},
                {"key": "zone", "effect": "PreferNoSchedule"}
            ]
        },
        "status": {"conditions": [{"type": "Ready", "status": "True"}]}
    })
}

/// `node` with `edit` applied.
fn edited(node: &Value, edit: impl FnOnce(&mut Value)) -> Value {
    let mut new = node.clone();
    edit(&mut new);
    new
}

/// What the API server hands admission after the controller's own patch: the patch applied,
/// managedFields updated by the server.
fn after_the_controllers_patch(node: &Value) -> Value {
    let typed: Node = serde_json::from_value(node.clone()).unwrap();
    let patch = lift_patch(&typed, DEFAULT_WARMUP_TAINT)
        .unwrap()
        .expect("the node is warming");
    let mut new = node.clone();
    json_patch::patch(&mut new, &patch).unwrap();
    new["metadata"]["managedFields"]
        .as_array_mut()
        .unwrap()
        .push(json!({"manager": "prefetch-controller", "operation": "Update"}));
    new
}

#[test]
fn the_controllers_own_patch_is_allowed() {
    let policy = load(&policy_document());
    let old = warming_node();
    let new = after_the_controllers_patch(&old);
    assert_eq!(policy.update(&old, &new), Verdict::Allowed);

    // The warmup taint as the only taint: the server stores no taints at all afterwards.
    let only = edited(
        &old,
        |n| {
            n["spec"]["taints"] =
                json!([{"key": DEFAULT_WARMUP_TAINT, "value": "true", "effect": "NoSchedule"}])
        },
    );
    let mut lifted = after_the_controllers_patch(&only);
    lifted["spec"].as_object_mut().unwrap().remove("taints");
    assert_eq!(policy.update(&only, &lifted), Verdict::Allowed);
    // A Node with no spec fields at all but the taint.
    let bare = json!({"metadata": {"name": "n"}, "spec": {"taints": [{"key": DEFAULT_WARMUP_TAINT, "effect": "NoSchedule"}]}});
    assert_eq!(
        policy.update(&bare, &json!({"metadata": {"name": "n"}, "spec": {}})),
        Verdict::Allowed
    );
    // Changing nothing is no harm either.
    assert_eq!(policy.update(&old, &old), Verdict::Allowed);
}

fn denied_with(verdict: Verdict, words: &str) {
    match verdict {
        Verdict::Denied(messages) => assert!(
            messages.iter().any(|m| m.contains(words)),
            "denied, but not for {words:?}: {messages:?}"
        ),
        other => panic!("expected a denial for {words:?}, got {other:?}"),
    }
}

#[test]
fn any_other_taint_change_is_denied() {
    let policy = load(&policy_document());
    let old = warming_node();
    let taint_message = format!("only by removing {DEFAULT_WARMUP_TAINT}:NoSchedule");
    let cases: Vec<(&str, Value)> = vec![
        (
            "another taint removed",
            edited(&old, |n| {
                n["spec"]["taints"].as_array_mut().unwrap().remove(0);
            }),
        ),
        (
            "both removed",
            edited(&old, |n| {
                n["spec"]["taints"] = json!([{"key": "zone", "effect": "PreferNoSchedule"}]);
            }),
        ),
        (
            "every taint dropped",
            edited(&old, |n| {
                n["spec"].as_object_mut().unwrap().remove("taints");
            }),
        ),
        (
            "a taint added",
            edited(&old, |n| {
                n["spec"]["taints"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"key": "x", "effect": "NoExecute"}));
            }),
        ),
        (
            "the warmup taint turned NoExecute",
            edited(&old, |n| {
                n["spec"]["taints"][1]["effect"] = json!("NoExecute")
            }),
        ),
        (
            "another taint's value changed",
            edited(&old, |n| n["spec"]["taints"][0]["value"] = json!("gpu")),
        ),
        (
            "taints reordered",
            edited(&old, |n| {
                n["spec"]["taints"] = json!([
                    {"key": "zone", "effect": "PreferNoSchedule"},
                    {"key": "dedicated", "value": "web", "effect": "NoSchedule"}
                ]);
            }),
        ),
    ];
    for (what, new) in cases {
        match policy.update(&old, &new) {
            Verdict::Denied(m) => assert!(
                m.iter().any(|m| m.contains(&taint_message)),
                "{what}: {m:?}"
            ),
            other => panic!("{what}: {other:?}"),
        }
    }
    // A NoExecute taint under the warmup key is not the warmup taint: not the controller's.
    let evicting = edited(&old, |n| {
        n["spec"]["taints"] = json!([{"key": DEFAULT_WARMUP_TAINT, "effect": "NoExecute"}])
    });
    let gone = edited(&evicting, |n| n["spec"]["taints"] = json!([]));
    denied_with(policy.update(&evicting, &gone), &taint_message);
}

#[test]
fn metadata_and_the_rest_of_the_spec_are_out_of_reach() {
    let policy = load(&policy_document());
    let old = warming_node();
    // Each edit rides along with the legitimate removal, so only the extra change is at fault.
    let lifted = after_the_controllers_patch(&old);
    let meta = "may not change the labels, annotations, finalizers or owners";
    let spec = "may not change the spec of a Node";
    type Edit = fn(&mut Value);
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "label added",
            |n| n["metadata"]["labels"]["gpu"] = json!("true"),
            meta,
        ),
        (
            "label changed",
            |n| n["metadata"]["labels"]["karpenter.sh/nodepool"] = json!("other"),
            meta,
        ),
        (
            "labels dropped",
            |n| {
                n["metadata"].as_object_mut().unwrap().remove("labels");
            },
            meta,
        ),
        (
            "annotation added",
            |n| n["metadata"]["annotations"]["a"] = json!("b"),
            meta,
        ),
        (
            "finalizer added",
            |n| n["metadata"]["finalizers"] = json!(["example.com/hold"]),
            meta,
        ),
        (
            "owner added",
            |n| {
                n["metadata"]["ownerReferences"] =
                    json!([{"apiVersion": "v1", "kind": "ConfigMap", "name": "x", "uid": "y"}])
            },
            meta,
        ),
        (
            "cordoned",
            |n| n["spec"]["unschedulable"] = json!(true),
            spec,
        ),
        (
            "podCIDR changed",
            |n| n["spec"]["podCIDR"] = json!("10.244.9.0/24"),
            spec,
        ),
        (
            "podCIDRs changed",
            |n| n["spec"]["podCIDRs"] = json!(["10.244.9.0/24"]),
            spec,
        ),
        (
            "providerID changed",
            |n| n["spec"]["providerID"] = json!("aws:///x"),
            spec,
        ),
        (
            "externalID set",
            |n| n["spec"]["externalID"] = json!("x"),
            spec,
        ),
        (
            "configSource set",
            |n| {
                n["spec"]["configSource"] = json!({"configMap":
                    {"name": "k", "namespace": "kube-system", "kubeletConfigKey": "k"}})
            },
            spec,
        ),
    ];
    for (what, edit, words) in cases {
        let new = edited(&lifted, edit);
        match policy.update(&old, &new) {
            Verdict::Denied(m) => assert!(m.iter().any(|m| m.contains(words)), "{what}: {m:?}"),
            other => panic!("{what}: {other:?}"),
        }
    }
    // Uncordoning is a change too.
    let cordoned = edited(&old, |n| n["spec"]["unschedulable"] = json!(true));
    let uncordoned = edited(&cordoned, |n| n["spec"]["unschedulable"] = json!(false));
    denied_with(policy.update(&cordoned, &uncordoned), spec);
}

#[test]
fn the_controller_may_not_create_or_delete_nodes() {
    let policy = load(&policy_document());
    let node = warming_node();
    let words = "may not create or delete Nodes";
    denied_with(
        policy.review(CONTROLLER, "CREATE", &Value::Null, &node),
        words,
    );
    denied_with(
        policy.review(CONTROLLER, "DELETE", &node, &Value::Null),
        words,
    );
}

#[test]
fn nobody_else_is_matched() {
    let policy = load(&policy_document());
    let old = warming_node();
    let cordoned = edited(&old, |n| n["spec"]["unschedulable"] = json!(true));
    for user in [
        "system:node:ip-10-0-1-17",
        "system:serviceaccount:kube-system:node-controller",
        "system:serviceaccount:prefetch-system:prefetch-webhook",
        "system:serviceaccount:other-namespace:prefetch-controller",
        "kubernetes-admin",
    ] {
        assert_eq!(
            policy.review(user, "UPDATE", &old, &cordoned),
            Verdict::NotMatched,
            "{user}"
        );
    }
}

#[test]
fn the_policy_names_the_controllers_account_and_taint() {
    let docs = base_documents();
    // The ServiceAccount the controller runs as, in the install's namespace.
    let deployment = docs
        .iter()
        .find(|d| d.kind == "Deployment" && d.name == "prefetch-controller")
        .unwrap();
    let account = deployment.value["spec"]["template"]["spec"]["serviceAccountName"]
        .as_str()
        .unwrap();
    let policy = policy_document();
    let condition = policy["spec"]["matchConditions"][0]["expression"]
        .as_str()
        .unwrap();
    assert!(
        condition.contains(&format!("'system:serviceaccount:{NAMESPACE}:{account}'")),
        "{condition}"
    );
    // The taint the controller is told to lift is the one the policy lets it lift.
    let args = strings(&deployment.value["spec"]["template"]["spec"]["containers"][0]["args"]);
    let taint_arg = args
        .iter()
        .find_map(|a| a.strip_prefix("--warmup-taint="))
        .expect("the Deployment sets --warmup-taint");
    assert_eq!(taint_arg, DEFAULT_WARMUP_TAINT);
    let warmup_variable = policy["spec"]["variables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "warmupTaint")
        .unwrap();
    assert_eq!(warmup_variable["expression"], format!("'{taint_arg}'"));
    // Bound, and denying.
    let binding = docs
        .iter()
        .find(|d| d.kind == "ValidatingAdmissionPolicyBinding")
        .expect("a binding");
    assert_eq!(
        binding.value["spec"]["policyName"],
        policy["metadata"]["name"]
    );
    assert_eq!(binding.value["spec"]["validationActions"], json!(["Deny"]));
}

// Warm rollouts (design: docs/src/design.md#warm-rollouts): on a Pod, the controller may only
// remove the rollout scheduling gate; its own prefetch pods' creation and deletion are not this
// policy's.

/// A gated workload pod as stored.
fn gated_pod() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": "web-7d4b9c8f6-x2x9z", "namespace": "shop", "uid": "p-1", "resourceVersion": "77",
            "labels": {"app": "web", "pod-template-hash": "7d4b9c8f6", "cache.techsquad.rocks/gated-by": "web"},
            "annotations": {"cache.techsquad.rocks/gated-until": "2026-11-22T10:15:00Z"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d4b9c8f6", "uid": "rs", "controller": true}]
        },
        "spec": {
            "containers": [{"name": "web", "image": "nginx:1.25"}],
            "initContainers": [{"name": "init", "image": "busybox:1.36"}],
            "schedulingGates": [{"name": "example.com/quota"}, {"name": "cache.techsquad.rocks/prefetch"}],
            "tolerations": [{"key": "dedicated", "operator": "Exists"}],
            "terminationGracePeriodSeconds": 30
        },
        "status": {"phase": "Pending"}
    })
}

/// What the API server hands admission after the controller's release patch.
fn released(pod: &Value) -> Value {
    let typed: k8s_openapi::api::core::v1::Pod = serde_json::from_value(pod.clone()).unwrap();
    let patch = prefetch_controller::core::gate::release_patch(&typed).expect("gated");
    let mut new = pod.clone();
    json_patch::patch(&mut new, &patch).unwrap();
    new
}

#[test]
fn the_controllers_gate_release_is_allowed() {
    let policy = load(&policy_document());
    let old = gated_pod();
    let new = released(&old);
    assert_eq!(
        new["spec"]["schedulingGates"],
        json!([{"name": "example.com/quota"}])
    );
    assert_eq!(
        policy.review_on("pods", CONTROLLER, "UPDATE", &old, &new),
        Verdict::Allowed
    );
    // Our gate the only one: none left.
    let only = edited(&old, |p| {
        p["spec"]["schedulingGates"] = json!([{"name": "cache.techsquad.rocks/prefetch"}])
    });
    let mut lifted = released(&only);
    assert_eq!(lifted["spec"]["schedulingGates"], json!([]));
    assert_eq!(
        policy.review_on("pods", CONTROLLER, "UPDATE", &only, &lifted),
        Verdict::Allowed
    );
    lifted["spec"]
        .as_object_mut()
        .unwrap()
        .remove("schedulingGates");
    assert_eq!(
        policy.review_on("pods", CONTROLLER, "UPDATE", &only, &lifted),
        Verdict::Allowed
    );
}

#[test]
fn any_other_pod_change_by_the_controller_is_denied() {
    let policy = load(&policy_document());
    let old = gated_pod();
    let lifted = released(&old);
    let gates =
        "may change the scheduling gates of a Pod only by removing cache.techsquad.rocks/prefetch";
    let meta = "may not change the labels, annotations, finalizers or owners of a Node or a Pod";
    let spec = "may not change the spec of a Pod but for removing the rollout gate";
    type Edit = fn(&mut Value);
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "another gate removed",
            |p| p["spec"]["schedulingGates"] = json!([{"name": "cache.techsquad.rocks/prefetch"}]),
            gates,
        ),
        (
            "every gate removed",
            |p| p["spec"]["schedulingGates"] = json!([]),
            gates,
        ),
        (
            "a gate added",
            |p| {
                p["spec"]["schedulingGates"] =
                    json!([{"name": "example.com/quota"}, {"name": "x.example/y"}])
            },
            gates,
        ),
        (
            "label changed",
            |p| p["metadata"]["labels"]["app"] = json!("evil"),
            meta,
        ),
        (
            "gated-by label dropped",
            |p| {
                p["metadata"]["labels"]
                    .as_object_mut()
                    .unwrap()
                    .remove("cache.techsquad.rocks/gated-by");
            },
            meta,
        ),
        (
            "annotation added",
            |p| p["metadata"]["annotations"]["x"] = json!("y"),
            meta,
        ),
        (
            "owner dropped",
            |p| p["metadata"]["ownerReferences"] = json!([]),
            meta,
        ),
        (
            "finalizer added",
            |p| p["metadata"]["finalizers"] = json!(["x.example/hold"]),
            meta,
        ),
        (
            "image changed",
            |p| p["spec"]["containers"][0]["image"] = json!("evil:1"),
            spec,
        ),
        (
            "init image changed",
            |p| p["spec"]["initContainers"][0]["image"] = json!("evil:1"),
            spec,
        ),
        (
            "toleration added",
            |p| {
                p["spec"]["tolerations"] =
                    json!([{"key": "dedicated", "operator": "Exists"}, {"operator": "Exists"}])
            },
            spec,
        ),
        (
            "nodeSelector set",
            |p| p["spec"]["nodeSelector"] = json!({"pool": "gpu"}),
            spec,
        ),
        (
            "affinity set",
            |p| p["spec"]["affinity"] = json!({"nodeAffinity": {}}),
            spec,
        ),
        (
            "deadline set",
            |p| p["spec"]["activeDeadlineSeconds"] = json!(1),
            spec,
        ),
        (
            "grace changed",
            |p| p["spec"]["terminationGracePeriodSeconds"] = json!(1),
            spec,
        ),
    ];
    for (what, edit, words) in cases {
        let mut new = lifted.clone();
        edit(&mut new);
        match policy.review_on("pods", CONTROLLER, "UPDATE", &old, &new) {
            Verdict::Denied(messages) => assert!(
                messages.iter().any(|m| m.contains(words)),
                "{what}: denied, but not for {words:?}: {messages:?}"
            ),
            other => panic!("{what}: expected a denial, got {other:?}"),
        }
    }
}

#[test]
fn prefetch_pods_come_and_go_and_nobody_else_is_matched() {
    let policy = load(&policy_document());
    let pod = gated_pod();
    for op in ["CREATE", "DELETE"] {
        let (old, new) = if op == "CREATE" {
            (Value::Null, pod.clone())
        } else {
            (pod.clone(), Value::Null)
        };
        assert_eq!(
            policy.review_on("pods", CONTROLLER, op, &old, &new),
            Verdict::NotMatched,
            "{op}"
        );
    }
    let relabelled = edited(&pod, |p| p["metadata"]["labels"]["app"] = json!("x"));
    for user in [
        "system:serviceaccount:kube-system:replicaset-controller",
        "kubernetes-admin",
    ] {
        assert_eq!(
            policy.review_on("pods", user, "UPDATE", &pod, &relabelled),
            Verdict::NotMatched
        );
    }
}

/// The install's mutating hook at `path` for `resource` (the first, if several).
fn hook_at(path: &str, resource: &str) -> Value {
    install_hooks_at(path, resource).unwrap().remove(0)
}

/// Whether every `matchConditions` rule of `hook` holds for (operation, object, oldObject).
fn conditions_hold(hook: &Value, operation: &str, object: &Value, old: &Value) -> bool {
    let conditions: Vec<Program> = hook["matchConditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| compile(c["expression"].as_str().unwrap()))
        .collect();
    let mut ctx = Context::default();
    ctx.add_variable("object", object.clone()).unwrap();
    ctx.add_variable("oldObject", old.clone()).unwrap();
    ctx.add_variable("request", json!({"operation": operation}))
        .unwrap();
    conditions
        .iter()
        .all(|c| c.execute(&ctx) == Ok(Cel::Bool(true)))
}

#[test]
fn the_signal_hooks_admit_only_image_changes_of_every_kind() {
    let pod_spec = |image: &str, init: Option<&str>, volume: Option<&str>| {
        let mut spec = json!({"containers": [{"name": "c", "image": image}]});
        if let Some(init) = init {
            spec["initContainers"] = json!([{"name": "i", "image": init}]);
        }
        if let Some(volume) = volume {
            spec["volumes"] = json!([{"name": "cfg", "configMap": {"name": "x"}},
                                     {"name": "w", "image": {"reference": volume}}]);
        }
        spec
    };
    let cases = [
        ("/mutate/deployment", "deployments", false),
        ("/mutate/workload", "statefulsets", false),
        ("/mutate/workload", "daemonsets", false),
        ("/mutate/workload", "cronjobs", true),
    ];
    for (path, resource, cron) in cases {
        let hook = hook_at(path, resource);
        let object = |spec: Value| {
            let template = json!({"metadata": {"labels": {"app": "web"}}, "spec": spec});
            if cron {
                json!({"spec": {"schedule": "0 * * * *", "jobTemplate": {"spec": {"template": template}}}})
            } else {
                json!({"spec": {"replicas": 3, "template": template}})
            }
        };
        let base = object(pod_spec("nginx:1", Some("init:1"), Some("weights:1")));
        let admits = |new: Value| conditions_hold(&hook, "UPDATE", &new, &base);
        assert!(!admits(base.clone()), "{resource}: no change");
        let mut scaled = base.clone();
        scaled["spec"]["replicas"] = json!(9);
        scaled["metadata"] = json!({"annotations": {"a": "b"}});
        assert!(!admits(scaled), "{resource}: scale and metadata churn");
        for (what, spec) in [
            (
                "container",
                pod_spec("nginx:2", Some("init:1"), Some("weights:1")),
            ),
            (
                "init container",
                pod_spec("nginx:1", Some("init:2"), Some("weights:1")),
            ),
            (
                "image volume",
                pod_spec("nginx:1", Some("init:1"), Some("weights:2")),
            ),
            (
                "init containers removed",
                pod_spec("nginx:1", None, Some("weights:1")),
            ),
            (
                "image volume removed",
                pod_spec("nginx:1", Some("init:1"), None),
            ),
        ] {
            assert!(admits(object(spec)), "{resource}: {what} changed");
        }
        assert!(
            conditions_hold(&hook, "CREATE", &base, &Value::Null),
            "{resource}: every CREATE"
        );
    }
}

/// A pod as its controller makes it: `kind`'s owner reference named `owner`, and the labels
/// that controller (or, for a Job, the API server's defaulting of the Job) puts on it.
fn workload_pod(kind: &str, owner: &str) -> Value {
    let labels = match kind {
        "ReplicaSet" => json!({"app": "web", "pod-template-hash": "7d4b9c8f6"}),
        "StatefulSet" => json!({"app": "web", "controller-revision-hash": "db-5c7f9",
                                 "apps.kubernetes.io/pod-index": "0"}),
        "DaemonSet" => json!({"app": "web", "controller-revision-hash": "agent-6b8d",
                               "pod-template-generation": "3"}),
        "Job" => json!({"app": "web", "batch.kubernetes.io/job-name": owner, "job-name": owner,
                         "batch.kubernetes.io/controller-uid": "j-1", "controller-uid": "j-1"}),
        _ => json!({"app": "web"}),
    };
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "generateName": format!("{owner}-"), "namespace": "shop", "labels": labels,
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": kind, "name": owner, "uid": "o-1",
                                 "controller": true}]
        },
        "spec": {"containers": [{"name": "web", "image": "nginx:1.25"}]}
    })
}

/// The names of the install's pod hooks that kube-apiserver would call for a CREATE of `pod` in
/// a namespace they select: object selector, then the match conditions in CEL.
fn pod_hooks_called(pod: &Value) -> Vec<String> {
    install_hooks_at("/mutate/pod", "pods")
        .unwrap()
        .into_iter()
        .filter(|h| {
            prefetch_tests::apiserver::LabelSelector::from_json(&h["objectSelector"])
                .unwrap()
                .matches(pod["metadata"]["labels"].as_object())
        })
        .filter(|h| match h["matchConditions"].as_array() {
            None => true,
            Some(_) => conditions_hold(h, "CREATE", pod, &Value::Null),
        })
        .map(|h| h["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn the_pod_hooks_admit_each_workload_pod_once_and_no_other() {
    for (kind, owner, hook) in [
        ("ReplicaSet", "web-7d4b9c8f6", "replicaset-pods"),
        ("StatefulSet", "db", "revision-pods"),
        ("DaemonSet", "agent", "revision-pods"),
        ("Job", "report-29431260", "job-pods"),
    ] {
        let pod = workload_pod(kind, owner);
        assert_eq!(
            pod_hooks_called(&pod),
            [format!("rollout-gate.{hook}.cache.techsquad.rocks")],
            "{kind}"
        );
    }
    // Labels of two kinds on one pod (a template that carries another controller's label):
    // still one call.
    let mut both = workload_pod("StatefulSet", "db");
    both["metadata"]["labels"]["pod-template-hash"] = json!("x");
    both["metadata"]["labels"]["batch.kubernetes.io/job-name"] = json!("db-1");
    assert_eq!(pod_hooks_called(&both).len(), 1, "{both}");
    let mut job_with_revision = workload_pod("Job", "report-29431260");
    job_with_revision["metadata"]["labels"]["controller-revision-hash"] = json!("x");
    assert_eq!(pod_hooks_called(&job_with_revision).len(), 1);

    for (what, pod) in [
        (
            "a bare pod",
            edited(&workload_pod("None", "web"), |p| {
                p["metadata"]
                    .as_object_mut()
                    .unwrap()
                    .remove("ownerReferences");
            }),
        ),
        (
            "a ReplicationController's",
            workload_pod("ReplicationController", "web"),
        ),
        ("a custom controller's", workload_pod("Runner", "web")),
        ("a Job made by hand", workload_pod("Job", "migrate")),
        (
            "a Job named like no CronJob's",
            workload_pod("Job", "migrate-v2"),
        ),
        (
            "a Job's pod whose owner is not its controller",
            edited(&workload_pod("Job", "report-1"), |p| {
                p["metadata"]["ownerReferences"][0]["controller"] = json!(false);
            }),
        ),
    ] {
        assert_eq!(pod_hooks_called(&pod), Vec::<String>::new(), "{what}");
    }
    // The test API server's mirror of the Job hook's condition agrees.
    for (owner, expected) in [
        ("report-29431260", true),
        ("migrate", false),
        ("migrate-v2", false),
    ] {
        let pod = workload_pod("Job", owner);
        assert_eq!(
            prefetch_tests::rollout::owned_by_a_cron_job(&pod),
            expected,
            "{owner}"
        );
    }
}

// Warm rollouts, admission that unselected pods never pay for (design:
// docs/src/design.md#warm-rollouts): the controller keeps the gated-rollouts label on the
// namespaces holding a gating Prefetch; on a Namespace it may set that label to "true" or remove
// it, and nothing else.

/// A namespace as stored: the server's own label, a team's labels and annotations, the
/// kubernetes finalizer.
fn stored_namespace() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {
            "name": "team-a", "uid": "ns-1", "resourceVersion": "9",
            "creationTimestamp": "2026-11-22T10:00:00Z",
            "labels": {"kubernetes.io/metadata.name": "team-a", "team": "a",
                       "pod-security.kubernetes.io/enforce": "restricted"},
            "annotations": {"owner": "platform"},
            "managedFields": [{"manager": "kubectl", "operation": "Update"}]
        },
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"}
    })
}

/// What the API server hands admission after the controller's server-side apply
/// (`gated_namespaces::apply_body`): its labels merged in, or ours removed, and managedFields
/// updated by the server.
fn after_the_controllers_apply(namespace: &Value, label: bool) -> Value {
    let name = namespace["metadata"]["name"].as_str().unwrap();
    let uid = namespace["metadata"]["uid"].as_str().unwrap();
    let body = apply_body(name, uid, label);
    let mut new = namespace.clone();
    let labels = new["metadata"]
        .as_object_mut()
        .unwrap()
        .entry("labels")
        .or_insert_with(|| json!({}));
    match body["metadata"]["labels"].as_object() {
        Some(applied) => {
            for (k, v) in applied {
                labels[k] = v.clone();
            }
        }
        None => {
            labels
                .as_object_mut()
                .unwrap()
                .remove(GATED_NAMESPACE_LABEL);
        }
    }
    new["metadata"]["managedFields"]
        .as_array_mut()
        .unwrap()
        .push(json!({"manager": "prefetch-controller", "operation": "Apply"}));
    new
}

fn namespace_update(policy: &Policy, old: &Value, new: &Value) -> Verdict {
    policy.review_on("namespaces", CONTROLLER, "UPDATE", old, new)
}

#[test]
fn the_controllers_namespace_label_is_allowed() {
    let policy = load(&policy_document());
    let old = stored_namespace();
    let labelled = after_the_controllers_apply(&old, true);
    assert_eq!(
        labelled["metadata"]["labels"][GATED_NAMESPACE_LABEL],
        "true"
    );
    assert_eq!(namespace_update(&policy, &old, &labelled), Verdict::Allowed);
    let unlabelled = after_the_controllers_apply(&labelled, false);
    assert!(unlabelled["metadata"]["labels"][GATED_NAMESPACE_LABEL].is_null());
    assert_eq!(
        namespace_update(&policy, &labelled, &unlabelled),
        Verdict::Allowed
    );
    // A value another manager set is taken over (the apply is forced).
    let other_value = edited(&old, |n| {
        n["metadata"]["labels"][GATED_NAMESPACE_LABEL] = json!("false")
    });
    assert_eq!(
        namespace_update(
            &policy,
            &other_value,
            &after_the_controllers_apply(&other_value, true)
        ),
        Verdict::Allowed
    );
    // A namespace with no labels at all, and no spec.
    let bare = json!({"metadata": {"name": "n", "uid": "u", "managedFields": []}});
    assert_eq!(
        namespace_update(&policy, &bare, &after_the_controllers_apply(&bare, true)),
        Verdict::Allowed
    );
    // An apply that changes nothing is no harm either.
    assert_eq!(namespace_update(&policy, &old, &old), Verdict::Allowed);
}

#[test]
fn any_other_namespace_change_by_the_controller_is_denied() {
    let policy = load(&policy_document());
    let old = stored_namespace();
    let labels = "only by setting cache.techsquad.rocks/gated-rollouts=true or removing it";
    let rest = "may not change the annotations, finalizers, owners or spec of a Namespace";
    type Edit = fn(&mut Value);
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "another label added",
            |n| n["metadata"]["labels"]["gpu"] = json!("true"),
            labels,
        ),
        (
            "another label changed",
            |n| n["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] = json!("privileged"),
            labels,
        ),
        (
            "another label removed",
            |n| {
                n["metadata"]["labels"]
                    .as_object_mut()
                    .unwrap()
                    .remove("team");
            },
            labels,
        ),
        (
            "our label set to false",
            |n| n["metadata"]["labels"][GATED_NAMESPACE_LABEL] = json!("false"),
            labels,
        ),
        (
            "every label dropped",
            |n| {
                n["metadata"].as_object_mut().unwrap().remove("labels");
            },
            labels,
        ),
        (
            "annotation added",
            |n| n["metadata"]["annotations"]["a"] = json!("b"),
            rest,
        ),
        (
            "annotations dropped",
            |n| {
                n["metadata"].as_object_mut().unwrap().remove("annotations");
            },
            rest,
        ),
        (
            "finalizer added",
            |n| n["metadata"]["finalizers"] = json!(["example.com/hold"]),
            rest,
        ),
        (
            "owner added",
            |n| {
                n["metadata"]["ownerReferences"] =
                    json!([{"apiVersion": "v1", "kind": "ConfigMap", "name": "x", "uid": "y"}])
            },
            rest,
        ),
        (
            "spec finalizers dropped",
            |n| n["spec"]["finalizers"] = json!([]),
            rest,
        ),
        (
            "spec dropped",
            |n| {
                n.as_object_mut().unwrap().remove("spec");
            },
            rest,
        ),
    ];
    for (what, edit, words) in cases {
        // Each edit rides along with the legitimate label, so only the extra change is at fault.
        let new = edited(&after_the_controllers_apply(&old, true), edit);
        match namespace_update(&policy, &old, &new) {
            Verdict::Denied(m) => assert!(m.iter().any(|m| m.contains(words)), "{what}: {m:?}"),
            other => panic!("{what}: {other:?}"),
        }
    }
    let words = "may not create or delete Namespaces";
    denied_with(
        policy.review_on("namespaces", CONTROLLER, "CREATE", &Value::Null, &old),
        words,
    );
    denied_with(
        policy.review_on("namespaces", CONTROLLER, "DELETE", &old, &Value::Null),
        words,
    );
}

#[test]
fn nobody_else_is_matched_on_namespaces() {
    let policy = load(&policy_document());
    let old = stored_namespace();
    let relabelled = edited(&old, |n| n["metadata"]["labels"]["gpu"] = json!("true"));
    for user in [
        "system:serviceaccount:kube-system:namespace-controller",
        "system:serviceaccount:prefetch-system:prefetch-webhook",
        "kubernetes-admin",
    ] {
        assert_eq!(
            policy.review_on("namespaces", user, "UPDATE", &old, &relabelled),
            Verdict::NotMatched,
            "{user}"
        );
    }
}

#[test]
fn the_pod_hook_sees_only_the_namespaces_the_controller_labels() {
    let hook = hook_at("/mutate/pod", "pods");
    let selector = &hook["namespaceSelector"];
    assert_eq!(
        selector["matchLabels"],
        json!({GATED_NAMESPACE_LABEL: GATED_NAMESPACE_VALUE}),
        "the label the controller writes"
    );
    assert_eq!(
        labelled_selector(),
        format!("{GATED_NAMESPACE_LABEL}={GATED_NAMESPACE_VALUE}"),
        "the controller watches what the hook selects"
    );
    // The excluded namespaces still are, as for the signal hooks.
    let signal = hook_at("/mutate/deployment", "deployments");
    assert_eq!(
        selector["matchExpressions"],
        signal["namespaceSelector"]["matchExpressions"]
    );
}
