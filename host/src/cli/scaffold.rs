//! `concord new NAME --lang rust|python|typescript`: a new agent's sources,
//! build file and test (from `host/templates/LANG/`), and its stanza in
//! concord.toml, so that `concord build NAME` and a host start just work.
//!
//! The scaffolded agent writes `note` and `count` on entities of a kind of
//! its own (its name, with `-` as `_`), creating them on first write: the
//! smallest agent that shows a versioned read, a create, an update and a
//! retry after a conflict. Nothing is overwritten: an existing folder, kind
//! or agent stanza is refused. Everything is checked before anything is
//! written (the config with the stanza loads, the workspace takes the
//! crate), so a refusal leaves no half-made agent behind.

use super::Failure;
use super::args::Lang;
use crate::policy::config::Config;
use anyhow::Context;
use std::path::{Path, PathBuf};

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

    // Everything is checked before anything is written: the config with the
    // stanza loads, the workspace takes the crate, the checkout is found.
    let config_text = with_stanza(config_path, name, &kind)?;
    let workspace = if lang == Lang::Rust { Some(workspace_edit(&dir)?) } else { None };
    let templates = match lang {
        Lang::Rust => RUST,
        Lang::Python => PYTHON,
        Lang::Typescript => TYPESCRIPT,
    };
    // The checkout (SDKs, scripts) and the config, as the agent's folder
    // sees them: the Python and TypeScript build and test files name both.
    // A Rust agent needs neither: its workspace holds the SDK.
    let at = std::path::absolute(&dir)?;
    let checkout = if lang == Lang::Rust { None } else { Some(super::build::project_root(config_path)?) };
    let root = checkout.as_deref().map(|c| relative(&at, c)).unwrap_or_default();
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
    std::fs::write(config_path, config_text).with_context(|| format!("cannot write {}", config_path.display()))?;
    if let Some((manifest, edited, _)) = &workspace {
        std::fs::write(manifest, edited).with_context(|| format!("cannot write {}", manifest.display()))?;
    }

    println!("made the {} agent `{name}` in {}", lang.title(), dir.display());
    println!("  concord.toml: [kinds.{kind}.fields] note and count, owned by {name}");
    if let Some((_, _, member)) = workspace {
        println!("  Cargo.toml: \"{member}\" joined the workspace's members");
    }
    println!("next:");
    println!(
        "  concord build {name}          build it into {}",
        config.agents_dir.join(format!("{name}.wasm")).display()
    );
    println!("  {}", test_hint(lang, name, &dir, checkout.as_deref()));
    println!(
        "  concord invoke {name} note --entity {kind}/first --body '{{\"text\":\"hello\"}}'   (with `concord serve` \
         running)"
    );
    Ok(0)
}

/// How to run the new agent's own test.
fn test_hint(lang: Lang, name: &str, dir: &Path, checkout: Option<&Path>) -> String {
    let script = |s: &str| checkout.unwrap_or(Path::new(".")).join("scripts").join(s).display().to_string();
    match lang {
        Lang::Rust => format!("cargo test -p {name}          run its test"),
        Lang::Python => format!("{} {}   run its test", script("test_python_agent.sh"), dir.display()),
        Lang::Typescript => format!("{} {}   run its test", script("test_js_agent.sh"), dir.display()),
    }
}

/// The config's text with the agent's kind appended, checked to load: it
/// is written only once everything else is known to fit. (The Python and
/// JavaScript runtimes fit the default `[limits] memory_mib`: the examples
/// need about 13 MiB.)
fn with_stanza(config_path: &Path, name: &str, kind: &str) -> Result<String, Failure> {
    let mut text =
        std::fs::read_to_string(config_path).with_context(|| format!("cannot read {}", config_path.display()))?;
    if !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&format!(
        "\n# The `{name}` agent, made by `concord new`: the fields it writes.\n\
         [kinds.{kind}.fields]\n\
         note  = {{ type = \"text\",    owner = \"{name}\" }}\n\
         count = {{ type = \"integer\", owner = \"{name}\" }}\n"
    ));
    let base = config_path.parent().unwrap_or(Path::new("."));
    if let Err(e) = Config::parse(&text, config_path, base) {
        return Err(Failure::usage(format!(
            "the stanza for `{name}` does not fit {} ({e}): pick another name; nothing was written",
            config_path.display()
        )));
    }
    Ok(text)
}

/// The edit that adds the crate to the members of the cargo workspace
/// above it (cargo builds only members with `-p`): the manifest, its new
/// text, and the member added. Checked to parse with the member in the
/// list; written by the caller.
fn workspace_edit(dir: &Path) -> Result<(PathBuf, String, String), Failure> {
    let dir = std::path::absolute(dir)?;
    let (root, text) = workspace_above(&dir).ok_or_else(|| {
        Failure::usage(format!(
            "a Rust agent is a crate of a cargo workspace, and there is none above {}: make the agent inside the \
             Concord checkout (or a project with a Cargo.toml holding [workspace])",
            dir.display()
        ))
    })?;
    let manifest = root.join("Cargo.toml");
    let member = dir.strip_prefix(&root).map(|p| p.to_string_lossy().replace('\\', "/")).unwrap_or_default();
    let by_hand = || {
        Failure::usage(format!(
            "cannot add \"{member}\" to the workspace members in {}: add it by hand (nothing was written)",
            manifest.display()
        ))
    };
    let start = text.find("members = [").ok_or_else(by_hand)?;
    let close = start + text[start..].find(']').ok_or_else(by_hand)?;
    let mut edited = text.clone();
    edited.insert_str(close, &format!("    \"{member}\",\n"));
    // Only an edit that still parses, with the member in the list, is kept.
    let parsed: Result<toml::Table, _> = edited.parse();
    let joined = parsed.ok().and_then(|t| {
        t.get("workspace")?.get("members")?.as_array().map(|m| m.iter().any(|v| v.as_str() == Some(&member)))
    });
    if joined != Some(true) {
        return Err(by_hand());
    }
    Ok((manifest, edited, member))
}

/// The nearest cargo workspace above `dir` (which need not exist yet):
/// its folder and its Cargo.toml's text.
fn workspace_above(dir: &Path) -> Option<(PathBuf, String)> {
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
