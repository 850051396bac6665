//! The configuration reference in the README is generated from the binaries' own flag
//! definitions (clap: every flag with an environment variable, its default and its help), so
//! it cannot drift from what the binaries read. This test fails when the README's table is not
//! what the binaries say; `TSYNC_UPDATE_DOCS=1` rewrites it.

use std::collections::BTreeMap;

use clap::CommandFactory;

const BEGIN: &str = "<!-- configuration reference: generated from the binaries' flags by tests/tests/e2e/config_reference.rs (TSYNC_UPDATE_DOCS=1 rewrites it); do not edit -->";
const END: &str = "<!-- end of the generated configuration reference -->";

/// One variable: who reads it, its default, what it means.
struct Variable {
    binaries: Vec<&'static str>,
    default: String,
    help: String,
}

fn collect(binary: &'static str, command: clap::Command, out: &mut BTreeMap<String, Variable>) {
    let mut stack = vec![command];
    while let Some(c) = stack.pop() {
        for arg in c.get_arguments() {
            let Some(env) = arg.get_env() else { continue };
            let name = env.to_string_lossy().into_owned();
            let entry = out.entry(name).or_insert_with(|| {
                let defaults: Vec<String> = arg
                    .get_default_values()
                    .iter()
                    .map(|v| v.to_string_lossy().into_owned())
                    .collect();
                let default = if !defaults.is_empty() {
                    format!("`{}`", defaults.join(","))
                } else if arg.is_required_set() {
                    "(required)".to_owned()
                } else {
                    "none".to_owned()
                };
                let help = arg
                    .get_help()
                    .map(|h| h.to_string())
                    .unwrap_or_default()
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
                    .replace('|', "\\|");
                Variable {
                    binaries: Vec::new(),
                    default,
                    help,
                }
            });
            if !entry.binaries.contains(&binary) {
                entry.binaries.push(binary);
            }
        }
        stack.extend(c.get_subcommands().cloned());
    }
}

/// The generated table, between its markers.
fn reference() -> String {
    let mut vars = BTreeMap::new();
    collect("wrapper", wrapper::config::Cli::command(), &mut vars);
    collect("crm", crm::Settings::command(), &mut vars);
    collect("hrms", hrms::Settings::command(), &mut vars);
    collect("projects", projects::Settings::command(), &mut vars);
    collect("tsync", sync_sdk::cli::Cli::command(), &mut vars);
    let mut out = format!(
        "{BEGIN}\n\n| Variable | Read by | Default | Meaning |\n| --- | --- | --- | --- |\n"
    );
    for (name, v) in vars {
        out.push_str(&format!(
            "| `{name}` | {} | {} | {} |\n",
            v.binaries.join(", "),
            v.default,
            v.help
        ));
    }
    out.push('\n');
    out.push_str(END);
    out
}

#[test]
fn the_readme_configuration_reference_is_what_the_binaries_read() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md");
    let readme = std::fs::read_to_string(path).unwrap();
    let (start, end) = match (readme.find(BEGIN), readme.find(END)) {
        (Some(s), Some(e)) => (s, e + END.len()),
        _ => panic!("README.md has no generated configuration reference (its markers)"),
    };
    let generated = reference();
    if readme[start..end] != generated {
        if std::env::var("TSYNC_UPDATE_DOCS").is_ok() {
            let updated = format!("{}{generated}{}", &readme[..start], &readme[end..]);
            std::fs::write(path, updated).unwrap();
            return;
        }
        panic!(
            "README.md's configuration reference is not what the binaries read: run \
             TSYNC_UPDATE_DOCS=1 cargo test -p tsync-e2e --test e2e config_reference"
        );
    }
}
