//! `deploy/` checked as far as this machine allows (no Docker, no cluster): every file parses,
//! the Chorus config they ship is a valid `ChorusConfig`, commands name real subcommands, and the
//! references between the pieces (services, selectors, config maps, secrets, hosts) resolve.

use std::collections::BTreeSet;

use chorus_core::config::ChorusConfig;
use serde_yaml_ng::Value;

const DEPLOY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy");
const ROLES: [&str; 5] = ["ingest", "router", "projector", "search", "push"];

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{DEPLOY}/{path}"))
        .unwrap_or_else(|error| panic!("{path}: {error}"))
}

/// The host of `kafka.bootstrap` and of `redis.url`.
fn service_hosts(config: &ChorusConfig) -> [String; 3] {
    let kafka = config
        .kafka
        .bootstrap
        .split(':')
        .next()
        .unwrap_or_default()
        .to_owned();
    let redis = config
        .redis
        .url
        .trim_start_matches("redis://")
        .split(':')
        .next()
        .unwrap_or_default()
        .to_owned();
    let clickhouse = config
        .clickhouse
        .url
        .trim_start_matches("http://")
        .split(':')
        .next()
        .unwrap_or_default()
        .to_owned();
    [kafka, redis, clickhouse]
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|item| item.as_str().map(str::to_owned))
        .collect()
}

/// A chorus command: `--config <file> <role>`.
fn assert_chorus_command(arguments: &[String], context: &str) {
    let role = arguments.last().map(String::as_str).unwrap_or_default();
    assert!(
        ROLES.contains(&role),
        "{context}: {arguments:?} names no chorus role"
    );
    assert_eq!(
        arguments.first().map(String::as_str),
        Some("--config"),
        "{context}"
    );
}

#[test]
fn docker_compose_references_resolve() {
    let mut compose: Value = serde_yaml_ng::from_str(&read("docker-compose.yml")).expect("yaml");
    compose.apply_merge().expect("merge keys");
    let services = compose["services"].as_mapping().expect("services");
    let names: BTreeSet<String> = services
        .keys()
        .filter_map(|key| key.as_str().map(str::to_owned))
        .collect();
    for required in [
        "kafka",
        "redis",
        "clickhouse",
        "router",
        "ingest-1",
        "ingest-2",
        "projector",
        "search",
    ] {
        assert!(names.contains(required), "service {required} missing");
    }
    let config = ChorusConfig::from_toml(&read("chorus.cluster.toml"), "chorus.cluster.toml")
        .expect("config");
    for host in service_hosts(&config) {
        assert!(
            names.contains(&host),
            "config points at {host}, which is no service"
        );
    }
    for (name, service) in services {
        let name = name.as_str().unwrap_or_default();
        for dependency in strings(&service["depends_on"]) {
            assert!(
                names.contains(&dependency),
                "{name} depends on unknown {dependency}"
            );
        }
        if service["image"].as_str() == Some("chorus:latest") {
            assert_chorus_command(&strings(&service["command"]), name);
            for volume in strings(&service["volumes"]) {
                let host = volume
                    .split(':')
                    .next()
                    .unwrap_or_default()
                    .trim_start_matches("./");
                assert!(
                    std::path::Path::new(&format!("{DEPLOY}/{host}")).exists(),
                    "{name} mounts missing {host}"
                );
            }
            assert!(
                service["environment"]["CHORUS_NODE_ID"].as_str().is_some(),
                "{name} needs a node id"
            );
        }
    }
}

#[test]
fn kubernetes_manifests_reference_resolve() {
    let mut documents = Vec::new();
    for document in serde_yaml_ng::Deserializer::from_str(&read("k8s/chorus.yaml")) {
        let value: Value = serde::Deserialize::deserialize(document).expect("yaml document");
        documents.push(value);
    }
    let kind_names = |kind: &str| -> BTreeSet<String> {
        documents
            .iter()
            .filter(|document| document["kind"].as_str() == Some(kind))
            .filter_map(|document| document["metadata"]["name"].as_str().map(str::to_owned))
            .collect()
    };
    let config_maps = kind_names("ConfigMap");
    let secrets = kind_names("Secret");
    let services = kind_names("Service");
    let workloads: Vec<&Value> = documents
        .iter()
        .filter(|document| {
            matches!(
                document["kind"].as_str(),
                Some("Deployment" | "StatefulSet")
            )
        })
        .collect();
    for service in documents
        .iter()
        .filter(|document| document["kind"].as_str() == Some("Service"))
    {
        let selector = service["spec"]["selector"].as_mapping().expect("selector");
        let matched = workloads.iter().any(|workload| {
            let labels = &workload["spec"]["template"]["metadata"]["labels"];
            selector.iter().all(|(key, value)| &labels[key] == value)
        });
        assert!(
            matched,
            "service {:?} selects no pods",
            service["metadata"]["name"]
        );
    }
    for workload in &workloads {
        let name = workload["metadata"]["name"].as_str().unwrap_or_default();
        let selector = workload["spec"]["selector"]["matchLabels"]
            .as_mapping()
            .expect("matchLabels");
        let labels = &workload["spec"]["template"]["metadata"]["labels"];
        assert!(
            selector.iter().all(|(key, value)| &labels[key] == value),
            "{name}: selector misses its pods"
        );
        let pod = &workload["spec"]["template"]["spec"];
        for volume in pod["volumes"].as_sequence().into_iter().flatten() {
            if let Some(map) = volume["configMap"]["name"].as_str() {
                assert!(
                    config_maps.contains(map),
                    "{name} mounts unknown config map {map}"
                );
            }
        }
        for container in pod["containers"].as_sequence().into_iter().flatten() {
            if container["image"].as_str() != Some("chorus:latest") {
                continue;
            }
            assert_chorus_command(&strings(&container["args"]), name);
            for variable in container["env"].as_sequence().into_iter().flatten() {
                if let Some(secret) = variable["valueFrom"]["secretKeyRef"]["name"].as_str() {
                    assert!(
                        secrets.contains(secret),
                        "{name} reads unknown secret {secret}"
                    );
                }
            }
        }
    }
    let config_map = documents
        .iter()
        .find(|document| document["kind"].as_str() == Some("ConfigMap"))
        .expect("config map");
    let text = config_map["data"]["chorus.toml"]
        .as_str()
        .expect("chorus.toml");
    let config = ChorusConfig::from_toml(text, "chorus-config")
        .expect("the config map's chorus.toml parses");
    for host in service_hosts(&config) {
        assert!(
            services.contains(&host),
            "config points at {host}, which is no Service"
        );
    }
}
