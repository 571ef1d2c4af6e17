//! `concord new NAME --lang rust|python|typescript`: a new agent's sources,
//! build file and test (from `host/templates/LANG/`), and its stanza in
//! concord.toml, so that `concord build NAME` and a host start just work.
//!
//! The scaffolded agent writes `note` and `count` on entities of a kind of
//! its own (its name, with `-` as `_`), creating them on first write: the
//! smallest agent that shows a versioned read, a create, an update and a
//! retry after a conflict. Nothing is overwritten: an existing folder, kind
//! or agent stanza is refused, and a stanza that would break the config is
//! taken back out before the command fails.

use super::Failure;
use super::args::Lang;
use crate::policy::config::Config;
use anyhow::Context;
use std::path::Path;

/// A template file: its path under the agent's folder, and its text with
/// `{{name}}` (the agent), `{{kind}}` (its entity kind), `{{root}}` (the
/// Concord checkout) and `{{config}}` (concord.toml) to fill in, the paths
/// relative to the agent's folder.
type Template = (&'static str, &'static str);

const RUST: &[Template] = &[
    ("Cargo.toml", include_str!("../../templates/rust/Cargo.toml")),
    ("src/lib.rs", include_str!("../../templates/rust/src/lib.rs")),
];

const PYTHON: &[Template] = &[
    ("app.py", include_str!("../../templates/python/app.py")),
    ("pyproject.toml", include_str!("../../templates/python/pyproject.toml")),
    ("test_app.py", include_str!("../../templates/python/test_app.py")),
];

const TYPESCRIPT: &[Template] = &[
    ("index.ts", include_str!("../../templates/typescript/index.ts")),
    ("package.json", include_str!("../../templates/typescript/package.json")),
    ("tsconfig.json", include_str!("../../templates/typescript/tsconfig.json")),
    ("index.test.ts", include_str!("../../templates/typescript/index.test.ts")),
];

pub(super) fn new(config_path: &Path, name: &str, lang: Lang) -> Result<u8, Failure> {
    crate::runtime::check_agent_name(name).map_err(Failure::usage)?;
    let config = Config::load(config_path)?;
    let kind = name.replace('-', "_");
    if config.schema.kinds.contains_key(&kind) {
        return Err(Failure::usage(format!(
            "concord.toml already declares the kind `{kind}`, which a new agent `{name}` would write: pick \
             another name"
        )));
    }
    if config.grants.contains_key(name) {
        return Err(Failure::usage(format!(
            "concord.toml already has [agents.{name}]: pick another name, or remove that stanza first"
        )));
    }
    let dir = config.agents_dir.join(name);
    if dir.exists() {
        return Err(Failure::usage(format!("{} already exists: pick another name", dir.display())));
    }

    if lang == Lang::Rust && workspace_above(&std::path::absolute(&dir)?).is_none() {
        return Err(Failure::usage(format!(
            "a Rust agent is a crate of a cargo workspace, and there is none above {}: make the agent inside the \
             Concord checkout (or a project with a Cargo.toml holding [workspace])",
            dir.display()
        )));
    }
    let templates = match lang {
        Lang::Rust => RUST,
        Lang::Python => PYTHON,
        Lang::Typescript => TYPESCRIPT,
    };
    // The checkout (SDKs, scripts) and the config, as the agent's folder
    // sees them: its build and test files name both.
    let at = std::path::absolute(&dir)?;
    let root = relative(&at, &super::build::project_root(config_path)?);
    let config_file = relative(&at, &std::path::absolute(config_path)?);
    for (file, text) in templates {
        let path = dir.join(file);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
        }
        let text = text
            .replace("{{name}}", name)
            .replace("{{kind}}", &kind)
            .replace("{{root}}", &root)
            .replace("{{config}}", &config_file);
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    add_stanza(config_path, name, &kind)?;
    let member = if lang == Lang::Rust { join_workspace(&dir)? } else { None };

    println!("made the {} agent `{name}` in {}", lang_word(lang), dir.display());
    println!("  concord.toml: [kinds.{kind}.fields] note and count, owned by {name}");
    if let Some(member) = member {
        println!("  Cargo.toml: \"{member}\" joined the workspace's members");
    }
    println!("next:");
    println!(
        "  concord build {name}          build it into {}",
        config.agents_dir.join(format!("{name}.wasm")).display()
    );
    println!("  {}", test_hint(lang, name));
    println!(
        "  concord invoke {name} note --entity {kind}/first --body '{{\"text\":\"hello\"}}'   (with `concord serve` \
         running)"
    );
    Ok(0)
}

fn lang_word(lang: Lang) -> &'static str {
    match lang {
        Lang::Rust => "Rust",
        Lang::Python => "Python",
        Lang::Typescript => "TypeScript",
    }
}

fn test_hint(lang: Lang, name: &str) -> String {
    match lang {
        Lang::Rust => format!("cargo test -p {name}          run its test"),
        Lang::Python => format!("scripts/test_python_agent.sh agents/{name}   run its test"),
        Lang::Typescript => format!("scripts/test_js_agent.sh agents/{name}   run its test"),
    }
}

/// Appends the agent's kind to the config, and takes it back out if the
/// config does not load with it. (The Python and JavaScript runtimes fit
/// the default `[limits] memory_mib`: the examples need about 13 MiB.)
fn add_stanza(config_path: &Path, name: &str, kind: &str) -> Result<(), Failure> {
    let before =
        std::fs::read_to_string(config_path).with_context(|| format!("cannot read {}", config_path.display()))?;
    let stanza = format!(
        "\n# The `{name}` agent, made by `concord new`: the fields it writes.\n\
         [kinds.{kind}.fields]\n\
         note  = {{ type = \"text\",    owner = \"{name}\" }}\n\
         count = {{ type = \"integer\", owner = \"{name}\" }}\n"
    );
    let mut after = before.clone();
    if !after.ends_with('\n') {
        after.push('\n');
    }
    after.push_str(&stanza);
    std::fs::write(config_path, &after).with_context(|| format!("cannot write {}", config_path.display()))?;
    if let Err(e) = Config::load(config_path) {
        std::fs::write(config_path, &before)
            .with_context(|| format!("cannot restore {} after a bad stanza", config_path.display()))?;
        return Err(Failure::usage(format!(
            "the stanza for `{name}` does not fit {} ({e}); the file is as it was",
            config_path.display()
        )));
    }
    Ok(())
}

/// Adds the crate to the members of the cargo workspace above it, if there
/// is one: cargo builds only members with `-p`. Returns the member added.
fn join_workspace(dir: &Path) -> Result<Option<String>, Failure> {
    let dir = std::path::absolute(dir)?;
    let Some((root, text)) = workspace_above(&dir) else { return Ok(None) };
    let manifest = root.join("Cargo.toml");
    let Some(start) = text.find("members = [") else {
        return Err(Failure::usage(format!(
            "{} has a [workspace] without a `members = [` list to add the agent to: add \"{}\" by hand",
            manifest.display(),
            dir.display()
        )));
    };
    let member = dir.strip_prefix(&root).map(|p| p.to_string_lossy().replace('\\', "/")).unwrap_or_default();
    let close = start + text[start..].find(']').context("the workspace's members list has no closing ]")?;
    let mut edited = text.clone();
    edited.insert_str(close, &format!("    \"{member}\",\n"));
    // Only an edit that still parses, with the member in the list, is kept.
    let parsed: Result<toml::Table, _> = edited.parse();
    let joined = parsed.ok().and_then(|t| {
        t.get("workspace")?.get("members")?.as_array().map(|m| m.iter().any(|v| v.as_str() == Some(&member)))
    });
    if joined != Some(true) {
        return Err(Failure::usage(format!(
            "could not add \"{member}\" to the workspace members in {}: add it by hand",
            manifest.display()
        )));
    }
    std::fs::write(&manifest, edited).with_context(|| format!("cannot write {}", manifest.display()))?;
    Ok(Some(member))
}

/// The nearest cargo workspace above `dir` (which need not exist yet):
/// its folder and its Cargo.toml's text.
fn workspace_above(dir: &Path) -> Option<(std::path::PathBuf, String)> {
    dir.ancestors().skip(1).find_map(|d| {
        let text = std::fs::read_to_string(d.join("Cargo.toml")).ok()?;
        text.parse::<toml::Table>().ok()?.contains_key("workspace").then(|| (d.to_path_buf(), text))
    })
}

/// `to` as seen from the folder `from` (both absolute): `../..` and the
/// rest, or `to` itself when they share nothing but the root.
fn relative(from: &Path, to: &Path) -> String {
    let (a, b): (Vec<_>, Vec<_>) = (from.components().collect(), to.components().collect());
    let common = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    if common <= 1 {
        return to.display().to_string();
    }
    let mut parts: Vec<String> = vec!["..".into(); a.len() - common];
    parts.extend(b[common..].iter().map(|c| c.as_os_str().to_string_lossy().into_owned()));
    if parts.is_empty() { ".".into() } else { parts.join("/") }
}

#[cfg(test)]
mod tests {
    use super::relative;
    use std::path::Path;

    #[test]
    fn paths_are_given_from_the_agents_folder() {
        let from = Path::new("/work/repo/agents/notes");
        assert_eq!(relative(from, Path::new("/work/repo")), "../..");
        assert_eq!(relative(from, Path::new("/work/repo/concord.toml")), "../../concord.toml");
        assert_eq!(relative(from, Path::new("/work/other/concord.toml")), "../../../other/concord.toml");
        assert_eq!(relative(from, from), ".");
        // Nothing in common but the root: the path itself.
        assert_eq!(relative(from, Path::new("/srv/concord")), "/srv/concord");
    }
}
