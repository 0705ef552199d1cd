//! Fuzz target of `chorus-core`: the config loader (the embedded log's segment reader is fuzzed
//! in `log/tests/fuzz.rs`).
//!
//! - `fuzz_config_loader`: TOML text built from the keys and values of
//!   `deploy/chorus.example.toml` (so new keys are fuzzed as soon as they are documented), with
//!   arbitrary numbers, strings and stray tokens, then `CHORUS_…` overrides (names taken from
//!   `apply_env`'s own source and `config/kafka_client.rs`), then `validate`. Guarantee: each
//!   step returns `Ok` or a `ConfigError` naming a file or a key, never panics (overflow checks
//!   are on in tests).
//!
//! Under `cargo test` the target runs a bounded number of random inputs (seconds); the long
//! run is described in docs/FUZZING.md.

use std::collections::HashMap;
use std::sync::LazyLock;

use bolero::{TypeGenerator, check};
use chorus_core::config::ChorusConfig;

/// Inputs of the config target's short run under `cargo test`.
const CONFIG_SHORT_RUN_ITERATIONS: usize = 5_000;

// ---------------------------------------------------------------------------------------------
// config loader

/// `(section, key, example value)` of every key in the example config, and the section names.
struct ConfigDictionary {
    keys: Vec<(String, String, String)>,
    sections: Vec<String>,
    environment_names: Vec<String>,
}

static DICTIONARY: LazyLock<ConfigDictionary> = LazyLock::new(|| {
    let example = include_str!("../../deploy/chorus.example.toml");
    let mut keys = Vec::new();
    let mut sections = vec![String::new()];
    let mut section = String::new();
    for line in example.lines() {
        let line = line.trim_start_matches("# ").trim();
        if let Some(rest) = line.strip_prefix('[') {
            if let Some(name) = rest.split(']').next() {
                section = name.to_owned();
                sections.push(section.clone());
            }
            continue;
        }
        let Some((key, rest)) = line.split_once(" = ") else {
            continue;
        };
        let key = key.trim();
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        let value = rest.split(" #").next().unwrap_or("").trim().to_owned();
        keys.push((section.clone(), key.to_owned(), value));
    }
    // `apply_env` and the `[kafka.client]` overrides it calls
    let sources = [
        include_str!("../src/config.rs"),
        include_str!("../src/config/kafka_client.rs"),
    ];
    let mut environment_names: Vec<String> = sources
        .iter()
        .flat_map(|source| source.split('"'))
        .filter(|piece| {
            piece.starts_with("CHORUS_")
                && piece
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c == '_' || c.is_ascii_digit())
        })
        .map(str::to_owned)
        .collect();
    environment_names.sort();
    environment_names.dedup();
    ConfigDictionary {
        keys,
        sections,
        environment_names,
    }
});

/// A value written after `key = `.
#[derive(Debug, Clone, TypeGenerator)]
enum TomlValue {
    /// The example file's own value for the key.
    Example,
    Integer(i64),
    /// Near the edges of the integer types the config uses.
    Edge(u8),
    Float(f64),
    Text(String),
    Boolean(bool),
    Array(Vec<i64>),
    /// Arbitrary text, for the TOML parser itself.
    Raw(String),
}

/// One line of the generated file.
#[derive(Debug, Clone, TypeGenerator)]
enum TomlLine {
    Section(u8),
    /// A key of the example (by index), under whatever section is current.
    Key(u16, TomlValue),
    /// A key with its own section as a dotted key, wherever it lands.
    DottedKey(u16, TomlValue),
    Raw(String),
}

#[derive(Debug, Clone, TypeGenerator)]
struct ConfigInput {
    lines: Vec<TomlLine>,
    environment: Vec<(u8, EnvironmentValue)>,
}

#[derive(Debug, Clone, TypeGenerator)]
enum EnvironmentValue {
    Number(i64),
    Boolean(bool),
    Text(String),
}

fn edge_number(selector: u8) -> String {
    const EDGES: [&str; 12] = [
        "0",
        "1",
        "-1",
        "255",
        "65535",
        "4294967295",
        "4294967296",
        "9223372036854775807",
        "-9223372036854775808",
        "18446744073709551615",
        "18446744073709551616",
        "9223372036854775806",
    ];
    EDGES[usize::from(selector) % EDGES.len()].to_owned()
}

fn render_value(value: &TomlValue, example: &str) -> String {
    match value {
        TomlValue::Example => example.to_owned(),
        TomlValue::Integer(number) => number.to_string(),
        TomlValue::Edge(selector) => edge_number(*selector),
        TomlValue::Float(number) => format!("{number:?}"),
        TomlValue::Text(text) => format!("{text:?}"),
        TomlValue::Boolean(flag) => flag.to_string(),
        TomlValue::Array(numbers) => format!("{numbers:?}"),
        TomlValue::Raw(text) => text.clone(),
    }
}

fn render_config(input: &ConfigInput) -> (String, HashMap<String, String>) {
    let dictionary = &*DICTIONARY;
    let mut text = String::new();
    for line in &input.lines {
        match line {
            TomlLine::Section(selector) => {
                let name = &dictionary.sections[usize::from(*selector) % dictionary.sections.len()];
                if !name.is_empty() {
                    text.push_str(&format!("[{name}]\n"));
                }
            }
            TomlLine::Key(selector, value) => {
                let (_, key, example) =
                    &dictionary.keys[usize::from(*selector) % dictionary.keys.len()];
                text.push_str(&format!("{key} = {}\n", render_value(value, example)));
            }
            TomlLine::DottedKey(selector, value) => {
                let (section, key, example) =
                    &dictionary.keys[usize::from(*selector) % dictionary.keys.len()];
                let name = if section.is_empty() {
                    key.clone()
                } else {
                    format!("{section}.{key}")
                };
                text.push_str(&format!("{name} = {}\n", render_value(value, example)));
            }
            TomlLine::Raw(raw) => {
                text.push_str(raw);
                text.push('\n');
            }
        }
    }
    let environment = input
        .environment
        .iter()
        .map(|(selector, value)| {
            let names = &dictionary.environment_names;
            let name = names[usize::from(*selector) % names.len()].clone();
            let value = match value {
                EnvironmentValue::Number(number) => number.to_string(),
                EnvironmentValue::Boolean(flag) => flag.to_string(),
                EnvironmentValue::Text(text) => text.clone(),
            };
            (name, value)
        })
        .collect();
    (text, environment)
}

/// Parse, override, validate: every step answers, and every error names a file or a key.
fn load_config(text: &str, environment: &HashMap<String, String>) {
    let mut config = match ChorusConfig::from_toml(text, "fuzz.toml") {
        Ok(config) => config,
        Err(error) => {
            assert!(
                error.to_string().starts_with("config file fuzz.toml"),
                "{error}"
            );
            return;
        }
    };
    if let Err(error) = config.apply_env(environment) {
        assert!(
            error.to_string().starts_with("config key CHORUS_"),
            "{error}"
        );
        return;
    }
    if let Err(error) = config.validate() {
        assert!(error.to_string().starts_with("config key "), "{error}");
        return;
    }
    // a valid config answers its derived values without panicking
    assert!(config.partitions() >= 1);
    let _ = config.topics();
}

#[test]
fn fuzz_config_loader() {
    assert!(DICTIONARY.keys.len() > 20, "the example config was read");
    assert!(
        DICTIONARY
            .environment_names
            .contains(&"CHORUS_LISTEN".to_owned())
    );
    check!()
        .with_type::<ConfigInput>()
        .with_iterations(CONFIG_SHORT_RUN_ITERATIONS)
        .for_each(|input| {
            let (text, environment) = render_config(input);
            load_config(&text, &environment);
        });
}
