//! The Kubernetes manifests in `deploy/kubernetes/` against the binary they run: every
//! variable they set is a setting or secret the binary reads, the probes hit its health
//! routes, the grace period outlasts its shutdown grace, credentials come from Secrets, the
//! single variant keeps its journal on a volume with one replica, the replicas variant
//! shares PostgreSQL, and the actions ConfigMap is a folder `port-runner validate` passes.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::helpers::BIN;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes")
}

/// Every document a kustomization includes, following directory resources.
fn documents(dir: &Path) -> Vec<Value> {
    let kustomization: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(dir.join("kustomization.yaml"))
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display())),
    )
    .unwrap();
    let mut docs = Vec::new();
    for resource in kustomization["resources"].as_array().unwrap() {
        let path = dir.join(resource.as_str().unwrap());
        assert!(
            path.exists(),
            "{} names {}, which does not exist",
            dir.display(),
            path.display()
        );
        if path.is_dir() {
            docs.extend(documents(&path));
        } else {
            let text = std::fs::read_to_string(&path).unwrap();
            for doc in serde_yaml_ng::Deserializer::from_str(&text) {
                let value: Value = serde::Deserialize::deserialize(doc)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                docs.push(value);
            }
        }
    }
    docs
}

fn one<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = docs.iter().filter(|d| d["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "one {kind}");
    found[0]
}

fn env<'a>(container: &'a Value, name: &str) -> Option<&'a Value> {
    container["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
}

/// What every variant must get right; returns the container.
fn check_common(docs: &[Value], variant: &str) -> Value {
    let deployment = one(docs, "Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    let containers = pod["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1, "{variant}");
    let container = containers[0].clone();
    assert_eq!(container["args"][0], "serve", "{variant}");

    // Every variable is one the binary reads.
    let mut known: BTreeSet<String> = port_runner::cli::settings()
        .into_iter()
        .map(|s| s.env)
        .collect();
    known.extend(
        port_runner::secret::SECRET_ENV
            .iter()
            .map(|(n, _)| n.to_string()),
    );
    for var in container["env"].as_array().unwrap() {
        let name = var["name"].as_str().unwrap();
        assert!(
            known.contains(name),
            "{variant}: {name} is not a setting of port-runner"
        );
    }
    // Credentials only from Secrets.
    for secret in [
        "PORT_CLIENT_ID",
        "PORT_CLIENT_SECRET",
        "PORT_RUNNER_ADMIN_TOKEN",
    ] {
        let var = env(&container, secret).unwrap_or_else(|| panic!("{variant}: {secret}"));
        assert!(var.get("value").is_none(), "{variant}: {secret} inline");
        assert!(
            var["valueFrom"]["secretKeyRef"]["name"].is_string(),
            "{variant}: {secret}"
        );
    }

    // Probes on the health routes, through the port the runner listens on.
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    let port_name = container["livenessProbe"]["httpGet"]["port"]
        .as_str()
        .unwrap();
    let port = container["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == port_name)
        .unwrap()["containerPort"]
        .as_u64()
        .unwrap();
    let listen = env(&container, "LISTEN_ADDR").unwrap()["value"]
        .as_str()
        .unwrap();
    assert!(
        listen.ends_with(&format!(":{port}")),
        "{variant}: {listen} vs {port}"
    );
    let service = one(docs, "Service");
    assert_eq!(service["spec"]["ports"][0]["targetPort"], port_name);
    assert_eq!(
        service["spec"]["selector"],
        deployment["spec"]["template"]["metadata"]["labels"]
    );

    // The pod outlives the runner's own shutdown grace.
    let grace: u64 = env(&container, "PORT_RUNNER_SHUTDOWN_GRACE_SECS")
        .map(|v| v["value"].as_str().unwrap().parse().unwrap())
        .unwrap_or(30);
    let termination = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(
        termination > grace + 10,
        "{variant}: {termination} s vs grace {grace} s"
    );

    // The image's user (Dockerfile) owns the data folder.
    let dockerfile =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("Dockerfile"))
            .unwrap();
    let uid = pod["securityContext"]["runAsUser"].as_u64().unwrap();
    assert!(
        dockerfile.contains(&format!("--uid {uid} ")),
        "{variant}: uid {uid}"
    );

    // The data folder and the actions folder are mounted where the variables say.
    let mounts = container["volumeMounts"].as_array().unwrap();
    let mounted = |var: &str| {
        let path = env(&container, var).unwrap()["value"].as_str().unwrap();
        let mount = mounts
            .iter()
            .find(|m| m["mountPath"] == path)
            .unwrap_or_else(|| panic!("{variant}: nothing mounted at {var}={path}"));
        pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == mount["name"])
            .unwrap()
            .clone()
    };
    let actions = mounted("PORT_RUNNER_ACTIONS_DIR");
    check_actions(docs, &actions["configMap"], variant);
    let data = mounted("PORT_RUNNER_DATA_DIR");
    let mut container = container;
    container["x-data-volume"] = data;
    container
}

/// The ConfigMap laid out as its volume's `items` place it passes `port-runner validate`.
fn check_actions(docs: &[Value], volume: &Value, variant: &str) {
    let map = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == volume["name"])
        .unwrap_or_else(|| panic!("{variant}: no ConfigMap {}", volume["name"]));
    let checkout = tempfile::tempdir().unwrap();
    for item in volume["items"].as_array().unwrap() {
        let key = item["key"].as_str().unwrap();
        let text = map["data"][key]
            .as_str()
            .unwrap_or_else(|| panic!("{variant}: the ConfigMap has no key {key}"));
        let path = checkout
            .path()
            .join("actions")
            .join(item["path"].as_str().unwrap());
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    let out = std::process::Command::new(BIN)
        .arg("validate")
        .arg(checkout.path())
        .current_dir(checkout.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{variant}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_single_replica_manifests_keep_the_journal_on_a_volume() {
    let docs = documents(&root().join("single"));
    let container = check_common(&docs, "single");
    let deployment = one(&docs, "Deployment");
    assert_eq!(deployment["spec"]["replicas"], 1);
    assert_eq!(
        deployment["spec"]["strategy"]["type"], "Recreate",
        "never two pods on one journal"
    );
    assert!(env(&container, "DATABASE_URL").is_none());
    let claim = container["x-data-volume"]["persistentVolumeClaim"]["claimName"].clone();
    let pvc = one(&docs, "PersistentVolumeClaim");
    assert_eq!(pvc["metadata"]["name"], claim);
    assert_eq!(pvc["spec"]["accessModes"][0], "ReadWriteOnce");
}

#[test]
fn the_replicas_manifests_share_postgresql_and_name_each_replica() {
    let docs = documents(&root().join("replicas"));
    let container = check_common(&docs, "replicas");
    let deployment = one(&docs, "Deployment");
    assert!(deployment["spec"]["replicas"].as_u64().unwrap() >= 2);
    let database = env(&container, "DATABASE_URL").unwrap();
    assert!(database["valueFrom"]["secretKeyRef"]["key"].is_string());
    assert_eq!(
        env(&container, "PORT_RUNNER_REPLICA_ID").unwrap()["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    assert!(docs.iter().all(|d| d["kind"] != "PersistentVolumeClaim"));
    assert!(container["x-data-volume"]["emptyDir"].is_object());
    let pdb = one(&docs, "PodDisruptionBudget");
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"],
        deployment["spec"]["selector"]["matchLabels"]
    );
}
