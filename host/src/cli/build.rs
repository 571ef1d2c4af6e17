//! `concord build`: agents from their sources to components in the agents
//! folder, compiled into the host's cache.
//!
//! An agent's sources are a folder, `SRC/NAME/`, and its build file says
//! its language: `Cargo.toml` (Rust: a crate of the workspace, built by
//! cargo for wasm32-wasip2), `app.py` (Python: componentize-py) or
//! `index.ts` (TypeScript: esbuild and componentize-js). The Python and
//! JavaScript toolchains come from the project's own scripts
//! (`scripts/toolchain_python.sh`, `scripts/toolchain_js.sh`), which install
//! them under `target/` and `agents/sdk-js/node_modules` on first use, so a
//! machine with rustup, python3 and node needs nothing done by hand.
//!
//! A component is written beside its final name and renamed into place, so
//! a running host's watcher never sees half a file. Then it is compiled with
//! the engine settings the host uses, into the host's cache (`[agents]
//! cache_dir`): a host start after a build loads it without compiling.

use super::Failure;
use super::args::Lang;
use crate::policy::config::Config;
use anyhow::{Context, anyhow};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Instant, SystemTime};

/// The file that marks a Concord checkout: the SDKs are generated from it.
const WIT: &str = "wit/concord.wit";

pub(super) fn build(
    config_path: &Path,
    names: &[String],
    src: Option<PathBuf>,
    out: Option<PathBuf>,
) -> Result<u8, Failure> {
    let config = Config::load(config_path)?;
    let src = src.unwrap_or_else(|| config.agents_dir.clone());
    let out = out.unwrap_or_else(|| config.agents_dir.clone());
    let targets = if names.is_empty() { source_folders(&src)? } else { named(&src, names)? };
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create the output folder {}", out.display()))?;
    for (name, dir, lang) in targets {
        let built = out.join(format!("{name}.wasm"));
        let started = Instant::now();
        let fresh = match lang {
            Lang::Rust => build_rust(&name, &dir, &built)?,
            // Only these need the checkout (the SDK and the toolchain scripts).
            Lang::Python | Lang::Typescript => build_polyglot(&project_root(config_path)?, &name, &dir, lang, &built)?,
        };
        let size = std::fs::metadata(&built).map(|m| m.len()).unwrap_or(0);
        let what =
            if fresh { format!("built in {:.1} s", started.elapsed().as_secs_f64()) } else { "up to date".into() };
        let compiled = crate::runtime::precompile(&built, &config.pool_limits(), &config.agents_cache)?;
        println!(
            "{name} ({}): {} ({:.1} MB), {what}; compiled into {} in {:.1} s",
            lang.as_str(),
            built.display(),
            size as f64 / 1e6,
            config.agents_cache.display(),
            compiled.as_secs_f64()
        );
    }
    Ok(0)
}

/// The Concord checkout the SDKs and toolchain scripts come from: the
/// nearest folder holding `wit/concord.wit`, looking up from the config's
/// folder, then from the current one.
pub(super) fn project_root(config_path: &Path) -> Result<PathBuf, Failure> {
    let config_dir = std::path::absolute(config_path)?.parent().map(Path::to_path_buf).unwrap_or_default();
    let starts = [config_dir, std::env::current_dir()?];
    for start in &starts {
        if let Some(root) = start.ancestors().find(|d| d.join(WIT).is_file()) {
            return Ok(root.to_path_buf());
        }
    }
    Err(Failure::not_found(format!(
        "`concord build` needs a Concord checkout (the SDKs and toolchains are there): no {WIT} above {} or {}; \
         run it from the checkout",
        starts[0].display(),
        starts[1].display()
    )))
}

/// The language of the agent sources in `dir`, from its build file. A
/// crate is an agent when it builds a `cdylib` (a library crate beside the
/// agents, such as the Rust SDK, is not). A Cargo.toml that does not parse
/// is an error, naming it, not a folder without sources.
fn language(dir: &Path) -> Result<Option<Lang>, Failure> {
    let manifest = dir.join("Cargo.toml");
    if manifest.is_file() {
        let table = read_toml(&manifest)?;
        let types = table.get("lib").and_then(|l| l.get("crate-type")).and_then(|t| t.as_array());
        return Ok(types.is_some_and(|t| t.iter().any(|t| t.as_str() == Some("cdylib"))).then_some(Lang::Rust));
    }
    Ok(if dir.join("app.py").is_file() {
        Some(Lang::Python)
    } else if dir.join("index.ts").is_file() {
        Some(Lang::Typescript)
    } else {
        None
    })
}

type Target = (String, PathBuf, Lang);

/// Every folder of `src` that holds agent sources, by name.
fn source_folders(src: &Path) -> Result<Vec<Target>, Failure> {
    let entries = std::fs::read_dir(src).with_context(|| format!("cannot read the agents folder {}", src.display()))?;
    let mut found = Vec::new();
    for entry in entries {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()).map(String::from) else { continue };
        if path.is_dir()
            && crate::runtime::check_agent_name(&name).is_ok()
            && let Some(lang) = language(&path)?
        {
            found.push((name, path, lang));
        }
    }
    found.sort_by(|a, b| a.0.cmp(&b.0));
    if found.is_empty() {
        return Err(Failure::not_found(format!(
            "no agent sources in {}: a folder per agent with a Cargo.toml, an app.py or an index.ts \
             (`concord new NAME --lang rust|python|typescript` makes one)",
            src.display()
        )));
    }
    Ok(found)
}

fn named(src: &Path, names: &[String]) -> Result<Vec<Target>, Failure> {
    let mut out = Vec::new();
    for name in names {
        crate::runtime::check_agent_name(name).map_err(Failure::usage)?;
        let dir = src.join(name);
        if !dir.is_dir() {
            return Err(Failure::not_found(format!(
                "no sources for agent `{name}`: {} is not a folder (make one with `concord new {name} --lang ...`, \
                 or pass --src)",
                dir.display()
            )));
        }
        let lang = language(&dir)?.ok_or_else(|| {
            Failure::usage(format!(
                "{} holds no agent sources: a Rust agent has a Cargo.toml building a cdylib, a Python one an \
                 app.py, a TypeScript one an index.ts",
                dir.display()
            ))
        })?;
        out.push((name.clone(), dir, lang));
    }
    Ok(out)
}

/// Runs a build tool, its output on stderr; names the agent if it fails.
fn run(name: &str, what: &str, command: &mut Command) -> Result<(), Failure> {
    let status = command
        .stdout(std::process::Stdio::inherit())
        .status()
        .with_context(|| format!("building {name}: cannot run {what}"))?;
    if !status.success() {
        return Err(anyhow!("building {name} failed: {what} exited with {status} (its output is above)").into());
    }
    Ok(())
}

/// Moves a finished build into place in one step.
fn install(name: &str, from: &Path, to: &Path) -> Result<(), Failure> {
    let staging = to.with_file_name(format!(".{name}.wasm.building"));
    std::fs::copy(from, &staging).with_context(|| format!("cannot write {}", staging.display()))?;
    std::fs::rename(&staging, to).with_context(|| format!("cannot move the build into {}", to.display()))?;
    Ok(())
}

/// cargo for wasm32-wasip2, from the workspace the crate belongs to, into
/// that workspace's target dir for guests (`target/wasm`). Cargo decides
/// what is stale; the component is copied only if it changed.
fn build_rust(name: &str, dir: &Path, built: &Path) -> Result<bool, Failure> {
    let manifest = dir.join("Cargo.toml");
    let package = read_toml(&manifest)?;
    let crate_name = package
        .get("package")
        .and_then(|p| p.get("name"))
        .and_then(|n| n.as_str())
        .ok_or_else(|| anyhow!("{} has no [package] name", manifest.display()))?
        .to_string();
    let workspace = workspace_of(dir)?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(
        name,
        "cargo",
        Command::new(cargo).current_dir(&workspace).args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--target-dir",
            "target/wasm",
            "-p",
            &crate_name,
        ]),
    )?;
    let artifact =
        workspace.join("target/wasm/wasm32-wasip2/release").join(format!("{}.wasm", crate_name.replace('-', "_")));
    let new = std::fs::read(&artifact).with_context(|| format!("cargo built no {}", artifact.display()))?;
    if std::fs::read(built).is_ok_and(|old| old == new) {
        return Ok(false);
    }
    install(name, &artifact, built)?;
    Ok(true)
}

fn read_toml(path: &Path) -> Result<toml::Table, Failure> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(text.parse().with_context(|| format!("{} is not valid TOML", path.display()))?)
}

/// The root of the cargo workspace the crate in `dir` is a member of. A
/// crate outside a workspace's members is not one cargo builds with `-p`
/// (it says only "did not match any packages"): say what to add instead.
fn workspace_of(dir: &Path) -> Result<PathBuf, Failure> {
    let dir = std::path::absolute(dir)?;
    let Some(root) =
        dir.ancestors().skip(1).find(|d| read_toml(&d.join("Cargo.toml")).is_ok_and(|t| t.contains_key("workspace")))
    else {
        return Err(Failure::usage(format!(
            "{} is in no cargo workspace: agents build in one (the Concord checkout's, or a Cargo.toml with \
             [workspace] above it)",
            dir.display()
        )));
    };
    let relative = dir.strip_prefix(root).map(|p| p.to_string_lossy().replace('\\', "/")).unwrap_or_default();
    let table = read_toml(&root.join("Cargo.toml"))?;
    let members = table.get("workspace").and_then(|w| w.get("members")).and_then(|m| m.as_array());
    if members.is_some_and(|m| m.iter().any(|v| v.as_str().map(|s| s.trim_end_matches('/')) == Some(&relative))) {
        return Ok(root.to_path_buf());
    }
    Err(Failure::usage(format!(
        "the crate in {relative} is not a member of the workspace: add \"{relative}\" to `members` under \
         [workspace] in {} (`concord new` does this)",
        root.join("Cargo.toml").display()
    )))
}

/// Python (componentize-py) or TypeScript (componentize-js), through the
/// project's scripts. Skipped when the component is newer than every
/// source it is made of: the agent's folder, its SDK and the WIT.
fn build_polyglot(root: &Path, name: &str, dir: &Path, lang: Lang, built: &Path) -> Result<bool, Failure> {
    let sdk = root.join(if lang == Lang::Python { "agents/sdk-python" } else { "agents/sdk-js" });
    let inputs = [dir.to_path_buf(), sdk, root.join("wit")];
    if let Ok(made) = std::fs::metadata(built).and_then(|m| m.modified())
        && inputs.iter().all(|d| newest(d).is_some_and(|t| t <= made))
    {
        return Ok(false);
    }
    let staging = built.with_file_name(format!(".{name}.wasm.componentize"));
    let script = |s: &str| root.join("scripts").join(s);
    match lang {
        Lang::Python => run(
            name,
            "scripts/build_python_agent.sh",
            Command::new("bash").arg(script("build_python_agent.sh")).arg(dir).arg(&staging),
        )?,
        _ => {
            run(name, "scripts/toolchain_js.sh", Command::new("bash").arg(script("toolchain_js.sh")))?;
            run(
                name,
                "agents/sdk-js/build.mjs",
                Command::new("node").arg(root.join("agents/sdk-js/build.mjs")).arg(dir.join("index.ts")).arg(&staging),
            )?;
        }
    }
    std::fs::rename(&staging, built).with_context(|| format!("cannot move the build into {}", built.display()))?;
    Ok(true)
}

/// The newest modification time of the files under `dir`, leaving out
/// what tools make there (dependencies, caches, generated types).
fn newest(dir: &Path) -> Option<SystemTime> {
    // Files only: a tool writing its cache into the folder changes the
    // folder's own time, not the sources'.
    std::fs::metadata(dir).ok()?;
    let mut newest = SystemTime::UNIX_EPOCH;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).ok()?.flatten() {
            let path = entry.path();
            let skip = path.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n.starts_with('.') || ["node_modules", "__pycache__", "target", "generated"].contains(&n)
            });
            if skip {
                continue;
            }
            let meta = entry.metadata().ok()?;
            if meta.is_dir() {
                stack.push(path);
            } else if let Ok(t) = meta.modified() {
                newest = newest.max(t);
            }
        }
    }
    Some(newest)
}
