//! Entity kinds, typed fields and who may write them, as declared in
//! `concord.toml`. Computed once when the config loads, so the checks at call
//! time are map lookups.

use crate::kb::{EntityRef, Value};
use std::collections::BTreeMap;

/// The declared type of a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    Text,
    Integer,
    Float,
    Boolean,
    Json,
}

impl FieldType {
    /// The names accepted in `type = "…"`.
    pub const NAMES: [&'static str; 5] = ["text", "integer", "float", "boolean", "json"];

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "text" => Self::Text,
            "integer" => Self::Integer,
            "float" => Self::Float,
            "boolean" => Self::Boolean,
            "json" => Self::Json,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Integer => "integer",
            Self::Float => "float",
            Self::Boolean => "boolean",
            Self::Json => "json",
        }
    }

    /// Checks a value against this type. `null` fits every type.
    /// The type's name with its article, for messages: `an integer`.
    pub fn article(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Integer => "an integer",
            Self::Float => "a float",
            Self::Boolean => "a boolean",
            Self::Json => "JSON",
        }
    }

    pub fn check(self, value: &Value) -> Result<(), String> {
        let ok = match (self, value) {
            (_, Value::Null) => true,
            (Self::Text, Value::Text(_)) | (Self::Integer, Value::Integer(_)) | (Self::Boolean, Value::Boolean(_)) => {
                true
            }
            (Self::Float, Value::Float(f)) => {
                if !f.is_finite() {
                    return Err(format!("{f} is not a finite float"));
                }
                true
            }
            (Self::Json, Value::Json(text)) => {
                // Parsed whole (not skimmed) so that serde_json's nesting
                // limit (128) applies: a JSON bomb is refused here, before
                // anything recursive ever walks it.
                if let Err(e) = serde_json::from_str::<serde_json::Value>(text) {
                    return Err(format!("the json value does not parse: {e}"));
                }
                true
            }
            _ => false,
        };
        if ok { Ok(()) } else { Err(format!("expected {}, got {}", self.name(), value_type(value))) }
    }
}

fn value_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Boolean(_) => "boolean",
        Value::Integer(_) => "integer",
        Value::Float(_) => "float",
        Value::Text(_) => "text",
        Value::Json(_) => "json",
    }
}

/// Who may write a field. Deny by default: an agent not named here may not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Writers {
    /// One owning agent.
    Owner(String),
    /// Several agents share the field.
    Shared(Vec<String>),
}

impl Writers {
    pub fn allows(&self, agent: &str) -> bool {
        match self {
            Writers::Owner(o) => o == agent,
            Writers::Shared(list) => list.iter().any(|w| w == agent),
        }
    }

    pub fn names(&self) -> Vec<String> {
        match self {
            Writers::Owner(o) => vec![o.clone()],
            Writers::Shared(list) => list.clone(),
        }
    }

    /// How the rule reads in errors and the audit.
    pub fn describe(&self) -> String {
        match self {
            Writers::Owner(o) => format!("owned by {o}"),
            Writers::Shared(list) => format!("writable by {}", list.join(", ")),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldDef {
    pub ty: FieldType,
    pub writers: Writers,
    /// Where it is declared in the config, for messages.
    pub line: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KindDef {
    pub fields: BTreeMap<String, FieldDef>,
    /// Agents granted leases on the kind although they write none of its
    /// fields (`[kinds.NAME] leases = [...]`); its writers may lease anyway.
    pub leases: Vec<String>,
}

impl KindDef {
    /// Whether `agent` may take a lease on an entity of this kind: a lease
    /// stops every other writer, so only an agent with a stake in the
    /// entity (one that may write some field) or one granted leases may.
    pub fn may_lease(&self, agent: &str) -> bool {
        self.fields.values().any(|f| f.writers.allows(agent)) || self.leases.iter().any(|a| a == agent)
    }

    /// The agents that may lease an entity of this kind, for messages.
    pub fn lessees(&self) -> Vec<String> {
        let mut names: std::collections::BTreeSet<String> =
            self.fields.values().flat_map(|f| f.writers.names()).collect();
        names.extend(self.leases.iter().cloned());
        names.into_iter().collect()
    }
}

/// Every declared kind.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Schema {
    pub kinds: BTreeMap<String, KindDef>,
    /// Each action kind an agent may ask for (`[actions.kinds]`), with
    /// the agents that may: any other kind is refused, as a field nobody
    /// owns is.
    pub actions: BTreeMap<String, Vec<String>>,
}

/// A name for an error message: cut at 64 characters, so that a hostile
/// 10 MB "kind" does not become a 10 MB message.
pub fn shorten(s: &str) -> String {
    if s.chars().count() <= 64 { s.to_string() } else { format!("{}…", s.chars().take(64).collect::<String>()) }
}

/// Whether `c` could make one printed name pass for another: a control
/// character (terminal escapes included), a bidirectional format character
/// (U+202E turns what follows around), or an invisible one (zero-width
/// space and joiners, the byte-order mark).
///
/// The invisible ones are Unicode's default-ignorable code points (soft
/// hyphen, variation selectors, tag characters, Hangul fillers, ...), and
/// the line and paragraph separators.
pub fn deceptive(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{00AD}'
                | '\u{034F}'
                | '\u{061C}'
                | '\u{115F}'..='\u{1160}'
                | '\u{17B4}'..='\u{17B5}'
                | '\u{180B}'..='\u{180F}'
                | '\u{200B}'..='\u{200F}'
                | '\u{2028}'..='\u{202E}'
                | '\u{2060}'..='\u{206F}'
                | '\u{3164}'
                | '\u{FE00}'..='\u{FE0F}'
                | '\u{FEFF}'
                | '\u{FFA0}'
                | '\u{FFF0}'..='\u{FFF8}'
                | '\u{1BCA0}'..='\u{1BCA3}'
                | '\u{1D173}'..='\u{1D17A}'
                | '\u{E0000}'..='\u{E0FFF}'
        )
}

/// The longest action kind, in bytes.
pub const MAX_ACTION_KIND: usize = 128;

/// Whether `kind` is a well-formed action kind: 1 to [`MAX_ACTION_KIND`]
/// ASCII letters, digits, `.`, `_` or `-` (`email.upsell`). The same rule
/// holds in `[actions.kinds]` and in `coord.act`, so a refused kind can
/// always be declared.
pub fn valid_action_kind(kind: &str) -> bool {
    !kind.is_empty()
        && kind.len() <= MAX_ACTION_KIND
        && kind.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// The longest entity id accepted, in bytes.
pub const MAX_ID_BYTES: usize = 256;

impl Schema {
    /// Checks that an entity reference names a declared kind and a sane id.
    pub fn check_ref(&self, entity: &EntityRef) -> Result<&KindDef, String> {
        let kind = self.kinds.get(&entity.kind).ok_or_else(|| {
            let known: Vec<&str> = self.kinds.keys().map(String::as_str).collect();
            format!("unknown entity kind `{}` (declared kinds: {})", shorten(&entity.kind), known.join(", "))
        })?;
        if entity.id.is_empty() {
            return Err(format!("entity `{}/` has an empty id", entity.kind));
        }
        if entity.id.len() > MAX_ID_BYTES {
            return Err(format!(
                "entity id of `{}` is {} bytes; the limit is {MAX_ID_BYTES}",
                entity.kind,
                entity.id.len()
            ));
        }
        if let Some(c) = entity.id.chars().find(|c| deceptive(*c)) {
            return Err(format!(
                "entity id {:?} of kind `{}` contains U+{:04X}, a control, bidirectional or invisible character: \
                 one id could pass for another where it is printed; use visible characters",
                shorten(&entity.id),
                entity.kind,
                u32::from(c)
            ));
        }
        if entity.id.contains('/') {
            return Err(format!(
                "entity id {:?} of kind `{}` contains `/`: `{}/{}` would read as a path; use another separator",
                shorten(&entity.id),
                entity.kind,
                entity.kind,
                shorten(&entity.id)
            ));
        }
        Ok(kind)
    }

    /// Every field an agent may write, as `kind.field`.
    pub fn writable_by(&self, agent: &str) -> Vec<String> {
        self.kinds
            .iter()
            .flat_map(|(k, def)| {
                def.fields.iter().filter(|(_, f)| f.writers.allows(agent)).map(move |(name, _)| format!("{k}.{name}"))
            })
            .collect()
    }

    /// Every agent name the config mentions as an owner, a writer, a
    /// lessee or a requester of actions.
    pub fn named_agents(&self) -> std::collections::BTreeSet<String> {
        self.kinds.values().flat_map(KindDef::lessees).chain(self.actions.values().flatten().cloned()).collect()
    }
}
