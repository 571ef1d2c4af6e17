//! The `{{name}}` agent, made by `concord new`. It writes the fields of the
//! `{{kind}}` kind that concord.toml gives it: `note` and `count`.
//!
//! Messages:
//! - `note` `{"text": "..."}` about `{{kind}}/ID`: records the text as the
//!   entity's note and counts the notes, creating the entity the first time.
//!
//! Build it with `concord build {{name}}`; try it with
//! `concord invoke {{name}} note --entity {{kind}}/first --body '{"text":"hello"}'`
//! against a running `concord serve`.

use concord_agent::{Entity, EntityRef, Handler, Message, Value, Write, WriteError, describe, kb};

struct Agent;

/// The write for one note, from the entity as just read (`None`: it does
/// not exist yet). Pure, so the tests run it natively.
fn note(target: &EntityRef, current: Option<&Entity>, text: &str) -> Write {
    let count = current.and_then(|e| e.integer("count")).unwrap_or(0) + 1;
    let write = match current {
        Some(read) => Write::update(read),
        None => Write::create(target.clone()),
    };
    write.set("note", Value::Text(text.into())).set("count", Value::Integer(count))
}

impl Handler for Agent {
    fn handle(message: Message) -> Result<String, String> {
        let target = message.entity.clone().ok_or("{{name}} needs an entity, such as {{kind}}/first")?;
        match message.kind.as_str() {
            "note" => {
                let text = message.body_field("text").as_str().unwrap_or_default().to_string();
                for _ in 0..3 {
                    let current = kb::get(&target)?;
                    match kb::commit(&[note(&target, current.as_ref(), &text)], "a note") {
                        Ok(versions) => return Ok(format!("noted {text:?} on {target} (version {})", versions[0])),
                        // Someone wrote in between: re-read and count again.
                        Err(WriteError::Conflict(_)) => continue,
                        Err(e) => return Err(describe(&e)),
                    }
                }
                Err(format!("{target} kept changing; the note was not recorded"))
            }
            other => Err(format!("{{name}} does not handle `{other}` messages (it handles note)")),
        }
    }
}

concord_agent::export!(Agent);

#[cfg(test)]
mod tests {
    use super::*;
    use concord_agent::{Expect, entity};

    #[test]
    fn the_first_note_creates_the_entity_and_later_ones_count() {
        let target = entity("{{kind}}", "first");
        let first = note(&target, None, "hello");
        assert!(matches!(first.expect, Expect::Absent));
        assert!(matches!(first.set[1].value, Value::Integer(1)), "{:?}", first.set);

        let read = Entity {
            kind: "{{kind}}".into(),
            id: "first".into(),
            version: 4,
            fields: vec![concord_agent::Field { name: "count".into(), value: Value::Integer(3) }],
            updated_at_ms: 0,
            updated_by: "{{name}}".into(),
        };
        let next = note(&target, Some(&read), "again");
        assert!(matches!(next.expect, Expect::Version(4)), "written against the version read");
        assert!(matches!(&next.set[0].value, Value::Text(t) if t == "again"), "{:?}", next.set);
        assert!(matches!(next.set[1].value, Value::Integer(4)), "{:?}", next.set);
    }
}
