//! docker-compose.yml cannot run here (no Docker engine), so this checks it against the
//! binaries: service names, ports, and every environment variable of wrapper, crm, hrms and projects is a
//! flag of that binary (read from its clap definition, i.e. what `--help` prints).

use std::collections::{BTreeMap, BTreeSet};

use clap::CommandFactory;

/// `service -> (environment keys, published ports)` from our compose file's block style.
fn parse_compose(text: &str) -> BTreeMap<String, (BTreeSet<String>, Vec<String>)> {
    let mut services = BTreeMap::new();
    let (mut service, mut section) = (None::<String>, "");
    for line in text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
    {
        let indent = line.len() - line.trim_start().len();
        let trimmed = line.trim();
        match indent {
            2 => {
                let name = trimmed.trim_end_matches(':').to_owned();
                services.insert(name.clone(), (BTreeSet::new(), Vec::new()));
                service = Some(name);
            }
            4 => section = trimmed.split(':').next().unwrap_or(""),
            6 => {
                let entry = services.get_mut(service.as_ref().unwrap()).unwrap();
                match section {
                    "environment" => {
                        entry
                            .0
                            .insert(trimmed.split(':').next().unwrap().to_owned());
                    }
                    "ports" => entry.1.push(
                        trimmed
                            .trim_start_matches("- ")
                            .trim_matches('"')
                            .to_owned(),
                    ),
                    _ => {}
                }
            }
            _ => {}
        }
    }
    services
}

fn env_flags(command: clap::Command) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut stack = vec![command];
    while let Some(c) = stack.pop() {
        for arg in c.get_arguments() {
            if let Some(env) = arg.get_env() {
                names.insert(env.to_string_lossy().into_owned());
            }
        }
        stack.extend(c.get_subcommands().cloned());
    }
    names
}

#[test]
fn compose_matches_the_binaries_flags_and_ports() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docker-compose.yml"
    ))
    .unwrap();
    let services = parse_compose(&text);
    let names: Vec<&str> = services.keys().map(String::as_str).collect();
    for expected in [
        "postgres", "redis", "mongo", "wrapper", "crm", "hrms", "projects", "nginx",
    ] {
        assert!(
            names.contains(&expected),
            "service {expected} missing: {names:?}"
        );
    }
    let binaries = [
        (
            "wrapper",
            env_flags(wrapper::config::Cli::command()),
            "WRAPPER_LISTEN",
            "8080",
        ),
        (
            "crm",
            env_flags(crm::Settings::command()),
            "CRM_LISTEN",
            "8081",
        ),
        (
            "hrms",
            env_flags(hrms::Settings::command()),
            "HRMS_LISTEN",
            "8082",
        ),
        (
            "projects",
            env_flags(projects::Settings::command()),
            "PROJECTS_LISTEN",
            "8083",
        ),
    ];
    for (service, flags, listen, port) in binaries {
        let (env, ports) = &services[service];
        assert!(!env.is_empty(), "{service} has no environment");
        for key in env {
            assert!(
                flags.contains(key),
                "{service}: {key} is not a flag of the binary ({flags:?})"
            );
        }
        assert!(env.contains(listen), "{service} sets no {listen}");
        assert_eq!(ports, &vec![format!("{port}:{port}")], "{service} ports");
    }
    assert_eq!(services["nginx"].1, vec!["80:80"]);
    assert!(text.contains("--appendonly\", \"yes"), "redis keeps an AOF");
    assert!(
        text.contains("--replSet"),
        "mongo runs as a replica set (transactions)"
    );
}
