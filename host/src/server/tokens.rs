//! API tokens: who may use `concord serve`, and for what.
//!
//! The tokens file (`[server] tokens` in `concord.toml`) holds, for each
//! token, its name, its role and the sha256 of the token, never the token
//! itself: `concord token add NAME --role ROLE` prints a new token once.
//! The name is who acts: an operator's pin is recorded as `human:NAME`.
//!
//! ```toml
//! [[token]]
//! name = "alice"
//! role = "operator"
//! sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
//! created_at_ms = 1796000000000
//! ```
//!
//! The server rereads the file when it changes (at most once a second), so
//! a token added or removed takes effect without a restart; a file that no
//! longer parses keeps the tokens it had, with an error in the log.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

/// What a token may do. Each role may do what the ones before it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read the knowledge base, the audit and the streams.
    Read,
    /// Also trigger agents.
    Invoke,
    /// Also act as a human: pin, unpin, revert, import, checkpoints.
    Operator,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Read, Role::Invoke, Role::Operator];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Invoke => "invoke",
            Role::Operator => "operator",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown role `{s}`: use read, invoke or operator"))
    }
}

/// One token, as the file holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    pub name: String,
    pub role: Role,
    /// sha256 of the token, hex.
    pub sha256: String,
    #[serde(default)]
    pub created_at_ms: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFile {
    #[serde(default)]
    token: Vec<TokenEntry>,
}

/// A tokens file that cannot be used. Names the file and what to do.
#[derive(Debug, thiserror::Error)]
#[error("{}: {reason}", path.display())]
pub struct TokenError {
    pub path: PathBuf,
    pub reason: String,
}

fn err(path: &Path, reason: impl Into<String>) -> TokenError {
    TokenError { path: path.to_path_buf(), reason: reason.into() }
}

/// Token names: 1 to 64 ASCII letters, digits, `.`, `_`, `-` or `@`,
/// since the name is who acts (`human:NAME`) in the audit.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = (1..=64).contains(&name.len())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'));
    if ok {
        Ok(())
    } else {
        Err(format!("`{name}` is not a token name: use 1 to 64 ASCII letters, digits, `.`, `_`, `-` or `@`"))
    }
}

/// The hex sha256 of a token, as the file keeps it.
pub fn digest(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Reads a tokens file; a missing file holds no tokens.
pub fn read(path: &Path) -> Result<Vec<TokenEntry>, TokenError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(err(path, format!("cannot read: {e}"))),
    };
    let file: TokenFile = toml::from_str(&text).map_err(|e| {
        let line = e.span().map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
        let at = line.map(|l| format!("line {l}: ")).unwrap_or_default();
        err(path, format!("{at}{}", e.message().trim_end()))
    })?;
    let mut names = std::collections::BTreeSet::new();
    for t in &file.token {
        check_name(&t.name).map_err(|e| err(path, e))?;
        if !names.insert(t.name.as_str()) {
            return Err(err(path, format!("the name `{}` is used by two tokens; remove one", t.name)));
        }
        if t.sha256.len() != 64 || !t.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(err(path, format!("token `{}`: sha256 is not 64 hex digits", t.name)));
        }
    }
    Ok(file.token)
}

fn write(path: &Path, tokens: Vec<TokenEntry>) -> Result<(), TokenError> {
    let text = format!(
        "# Concord API tokens (`concord token add`): the sha256 of each token, never the token itself.\n{}",
        toml::to_string(&TokenFile { token: tokens }).map_err(|e| err(path, e.to_string()))?
    );
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| err(path, format!("cannot create the folder: {e}")))?;
    }
    // Written beside, then renamed over: a reader never sees half a file.
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options.open(&tmp).map_err(|e| err(path, format!("cannot write {}: {e}", tmp.display())))?;
    std::io::Write::write_all(&mut f, text.as_bytes()).map_err(|e| err(path, format!("cannot write: {e}")))?;
    f.sync_all().map_err(|e| err(path, format!("cannot sync: {e}")))?;
    std::fs::rename(&tmp, path).map_err(|e| err(path, format!("cannot replace: {e}")))
}

/// Adds a token named `name` and returns it: the only time it is shown.
pub fn add(path: &Path, name: &str, role: Role) -> Result<String, TokenError> {
    check_name(name).map_err(|e| err(path, e))?;
    let mut tokens = read(path)?;
    if tokens.iter().any(|t| t.name == name) {
        return Err(err(
            path,
            format!("a token named `{name}` exists; remove it first (`concord token remove {name}`)"),
        ));
    }
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| err(path, format!("no randomness for a token: {e}")))?;
    let token = format!("concord_{}", hex::encode(secret));
    tokens.push(TokenEntry { name: name.into(), role, sha256: digest(&token), created_at_ms: crate::kb::now_ms() });
    write(path, tokens)?;
    Ok(token)
}

/// Removes the token named `name`. Returns whether there was one.
pub fn remove(path: &Path, name: &str) -> Result<bool, TokenError> {
    let mut tokens = read(path)?;
    let before = tokens.len();
    tokens.retain(|t| t.name != name);
    if tokens.len() == before {
        return Ok(false);
    }
    write(path, tokens)?;
    Ok(true)
}

/// Who a request acts as.
#[derive(Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's name; `None` on an open server (no tokens configured).
    pub name: Option<String>,
    pub role: Role,
    /// The token's sha256, to check later that it is still valid (a long
    /// stream); never logged.
    digest: Option<String>,
}

impl std::fmt::Debug for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Principal").field("name", &self.name).field("role", &self.role).finish_non_exhaustive()
    }
}

impl Principal {
    /// Everyone, as an operator, on a server without tokens.
    pub fn open() -> Self {
        Principal { name: None, role: Role::Operator, digest: None }
    }
}

/// The tokens a running server accepts, reread when the file changes.
#[derive(Debug)]
pub struct TokenSet {
    /// `None`: no tokens file is configured, and the server is open.
    path: Option<PathBuf>,
    state: Mutex<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    by_digest: HashMap<String, (String, Role)>,
    modified: Option<SystemTime>,
    checked: Instant,
}

/// How often the file's change time is looked at, at most.
pub(crate) const RECHECK: Duration = Duration::from_secs(1);

impl TokenSet {
    /// Loads the file (a missing one holds no tokens, so nothing is let
    /// in); `None` for an open server.
    pub fn load(path: Option<&Path>) -> Result<TokenSet, TokenError> {
        let (by_digest, modified) = match path {
            Some(p) => (index(read(p)?), modified(p)),
            None => (HashMap::new(), None),
        };
        Ok(TokenSet {
            path: path.map(Path::to_path_buf),
            state: Mutex::new(Loaded { by_digest, modified, checked: Instant::now() }),
        })
    }

    /// Whether the server runs without tokens (everyone is an operator).
    pub fn is_open(&self) -> bool {
        self.path.is_none()
    }

    /// How many tokens are accepted.
    pub fn len(&self) -> usize {
        self.lock().by_digest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Loaded> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Who `token` is, or `None` if it is not a token of the file.
    pub fn identify(&self, token: &str) -> Option<Principal> {
        if self.path.is_none() {
            return Some(Principal::open());
        }
        self.by_digest(&digest(token))
    }

    /// Whether `p` still holds: its token is still in the file, with the
    /// same name and role (a token removed or changed ends what it holds
    /// open, such as a stream, within a second).
    pub fn still_valid(&self, p: &Principal) -> bool {
        match &p.digest {
            None => self.path.is_none(),
            Some(d) => self.by_digest(d).is_some_and(|now| now.name == p.name && now.role == p.role),
        }
    }

    fn by_digest(&self, digest: &str) -> Option<Principal> {
        let Some(path) = &self.path else { return Some(Principal::open()) };
        let mut state = self.lock();
        if state.checked.elapsed() >= RECHECK {
            state.checked = Instant::now();
            let now = modified(path);
            if now != state.modified {
                state.modified = now;
                match read(path) {
                    Ok(tokens) => {
                        state.by_digest = index(tokens);
                        tracing::info!("{}: reread, {} tokens", path.display(), state.by_digest.len());
                    }
                    Err(e) => tracing::error!("{e}; the tokens read before are still accepted"),
                }
            }
        }
        state.by_digest.get(digest).map(|(name, role)| Principal {
            name: Some(name.clone()),
            role: *role,
            digest: Some(digest.to_string()),
        })
    }
}

fn index(tokens: Vec<TokenEntry>) -> HashMap<String, (String, Role)> {
    tokens.into_iter().map(|t| (t.sha256.to_ascii_lowercase(), (t.name, t.role))).collect()
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_added_found_and_removed_and_only_their_digest_is_kept() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("tokens.toml");
        let alice = add(&path, "alice", Role::Operator).expect("add");
        let bob = add(&path, "bob", Role::Read).expect("add");
        let text = std::fs::read_to_string(&path).expect("file");
        assert!(!text.contains(&alice) && !text.contains(&bob), "no token is stored: {text}");
        assert!(text.contains(&digest(&alice)));
        let e = add(&path, "alice", Role::Read).expect_err("a second alice");
        assert!(e.to_string().contains("remove it first"), "{e}");
        add(&path, "bad name", Role::Read).expect_err("a bad name");
        let set = TokenSet::load(Some(&path)).expect("load");
        let a = set.identify(&alice).expect("alice");
        assert_eq!((a.name.as_deref(), a.role), (Some("alice"), Role::Operator));
        assert!(set.still_valid(&a));
        assert_eq!(set.identify(&bob).map(|p| p.role), Some(Role::Read));
        assert_eq!(set.identify("concord_0000"), None);
        let b = set.identify(&bob).expect("bob");
        assert!(remove(&path, "bob").expect("remove"));
        assert!(!remove(&path, "bob").expect("remove"));
        std::thread::sleep(RECHECK);
        assert!(!set.still_valid(&b), "a removed token no longer holds");
        assert!(set.still_valid(&a));
        assert_eq!(read(&path).expect("read").len(), 1);
    }

    #[test]
    fn a_bad_file_is_named_with_its_line_and_a_missing_one_lets_nobody_in() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("tokens.toml");
        let set = TokenSet::load(Some(&path)).expect("a missing file");
        assert!(set.is_empty() && !set.is_open());
        assert_eq!(set.identify("anything"), None);
        std::fs::write(&path, "[[token]]\nname = \"a\"\nrole = \"admin\"\nsha256 = \"00\"\n").expect("write");
        let e = TokenSet::load(Some(&path)).expect_err("unknown role");
        assert!(e.to_string().contains("line 3"), "{e}");
        assert!(TokenSet::load(None).expect("open").identify("").is_some(), "an open server lets everyone in");
    }
}
