//! The layers over the config file: `SWITCHBOARD_*` environment variables, then
//! command-line flags, each a dotted field path and a raw string.
//!
//! A value is typed by its field, not guessed from its text: a string field takes the raw
//! string as it is (a token of digits stays a string, `node_id = 123` too), a number or
//! boolean field parses it as one, and a table, array or function-target field takes TOML
//! when the value starts with `{` or `[` (`{ url = "…", dialect = "aws" }`), else the raw
//! string. A field's type is read from a value of it: the config with every field set,
//! serialized (`types`, built by the caller).
//!
//! Errors name the variable or flag at fault, never the file, and never show the value of a
//! secret ([`SECRETS`]).

use crate::error::ConfigError;

/// Fields whose values are secrets: an error about them never shows the value.
const SECRETS: &[&str] = &["sendback.token", "aws.credentials"];

/// One value over the file: from an environment variable or a command-line flag.
#[derive(Debug, Clone)]
pub(super) struct Layer {
    /// The dotted field path, e.g. `limits.idle_timeout`.
    pub path: String,
    /// The value as given.
    pub value: String,
    /// Where it came from, e.g. `environment variable SWITCHBOARD_LIMITS__IDLE_TIMEOUT`.
    pub origin: String,
}

/// Sets every layer, in order, in `table` (the file's), each typed by its field in `types`.
pub(super) fn apply(
    table: &mut toml::Table,
    types: &toml::Table,
    layers: &[Layer],
) -> Result<(), ConfigError> {
    for layer in layers {
        let invalid = |message| ConfigError::Invalid {
            origin: layer.origin.clone(),
            message,
        };
        let value =
            typed(&layer.path, lookup(types, &layer.path), &layer.value).map_err(invalid)?;
        set_path(table, &layer.path, value).map_err(invalid)?;
    }
    Ok(())
}

/// The error for a merged table that does not deserialize: it blames the last layer that
/// set the failing field (or a field inside or around it), else the file (`file_origin`).
pub(super) fn blame(err: &toml::de::Error, layers: &[Layer], file_origin: &str) -> ConfigError {
    let path = failing_path(err);
    let origin = layers
        .iter()
        .rev()
        .find(|layer| overlaps(&layer.path, &path))
        .map_or(file_origin, |layer| layer.origin.as_str());
    let message = if SECRETS.iter().any(|secret| overlaps(secret, &path)) {
        without_values(err.message())
    } else {
        err.message().to_owned()
    };
    let message = match failing_table(err) {
        Some(table) => format!("{message} in `{table}`"),
        None => message,
    };
    ConfigError::Invalid {
        origin: origin.to_owned(),
        message,
    }
}

/// Where a field that failed validation came from, if a layer set it.
pub(super) fn origin_of<'a>(field: &str, layers: &'a [Layer]) -> Option<&'a str> {
    // `aws.credentials[0]` was set as `aws.credentials`.
    let field = field.split('[').next().unwrap_or(field);
    layers
        .iter()
        .rev()
        .find(|layer| overlaps(&layer.path, field))
        .map(|layer| layer.origin.as_str())
}

/// The value of `raw` for the field at `path`, whose type `expected` has (`None`: a field
/// without a fixed type, such as a route of `functions.routes`, or an unknown one).
fn typed(path: &str, expected: Option<&toml::Value>, raw: &str) -> Result<toml::Value, String> {
    use toml::Value;
    let shown = || {
        if is_secret(path) {
            format!("a value of {} characters", raw.chars().count())
        } else {
            format!("{raw:?}")
        }
    };
    let scalar = || raw.trim().parse::<Value>().ok();
    match expected {
        Some(Value::String(_)) => Ok(Value::String(raw.to_owned())),
        Some(Value::Integer(_)) => match scalar() {
            Some(v @ Value::Integer(_)) => Ok(v),
            _ => Err(format!("`{path}` expects an integer, got {}", shown())),
        },
        Some(Value::Float(_)) => match scalar() {
            Some(v @ Value::Float(_)) => Ok(v),
            Some(Value::Integer(i)) => Ok(Value::Float(i as f64)),
            _ => Err(format!("`{path}` expects a number, got {}", shown())),
        },
        Some(Value::Boolean(_)) => match scalar() {
            Some(v @ Value::Boolean(_)) => Ok(v),
            _ => Err(format!("`{path}` expects true or false, got {}", shown())),
        },
        Some(Value::Datetime(_)) => match scalar() {
            Some(v @ Value::Datetime(_)) => Ok(v),
            _ => Err(format!(
                "`{path}` expects a TOML date-time, got {}",
                shown()
            )),
        },
        // A table, an array, a target (a URL or a table), or a field of no fixed type.
        Some(Value::Table(_) | Value::Array(_)) | None => {
            if raw.trim_start().starts_with(['{', '[']) {
                // The parser's message only: its full display quotes the input.
                raw.trim()
                    .parse::<Value>()
                    .map_err(|e| format!("`{path}` is not a valid TOML value: {}", e.message()))
            } else {
                Ok(Value::String(raw.to_owned()))
            }
        }
    }
}

/// The value at a dotted path of `table`, if there is one.
fn lookup<'a>(table: &'a toml::Table, path: &str) -> Option<&'a toml::Value> {
    let mut parts = path.split('.');
    let mut value = table.get(parts.next()?)?;
    for part in parts {
        value = value.as_table()?.get(part)?;
    }
    Some(value)
}

/// The most segments an environment variable's or a flag's dotted path may have.
const MAX_PATH_DEPTH: usize = 8;

/// Sets `a.b.c = value` in a TOML table, making the tables on the way.
fn set_path(table: &mut toml::Table, path: &str, value: toml::Value) -> Result<(), String> {
    let mut parts: Vec<&str> = path.split('.').collect();
    // The deepest field is `functions.routes.<key>.two_way`; thousands of levels would
    // overflow the stack when the nested tables are dropped.
    if parts.len() > MAX_PATH_DEPTH {
        return Err(format!("more than {MAX_PATH_DEPTH} levels"));
    }
    let Some(last) = parts.pop() else {
        return Err("empty key".into());
    };
    let mut cur = table;
    for part in parts {
        let entry = cur
            .entry(part.to_owned())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = entry
            .as_table_mut()
            .ok_or_else(|| format!("`{part}` is not a table"))?;
    }
    cur.insert(last.to_owned(), value);
    Ok(())
}

/// The dotted path of the table in which deserialization failed, if not the top level.
/// toml shows it after the message (`in \`a.b\``) and keeps it otherwise private.
fn failing_table(err: &toml::de::Error) -> Option<String> {
    let shown = err.to_string();
    let (_, keys) = shown.trim_end().rsplit_once("\nin `")?;
    Some(keys.strip_suffix('`')?.to_owned()).filter(|k| !k.is_empty())
}

/// The dotted path of the field that failed: the failing table's, and the field serde
/// names when it is unknown there.
fn failing_path(err: &toml::de::Error) -> String {
    let table = failing_table(err).unwrap_or_default();
    let unknown = err
        .message()
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split('`').next());
    match unknown {
        Some(field) if table.is_empty() => field.to_owned(),
        Some(field) => format!("{table}.{field}"),
        None => table,
    }
}

/// Whether one path is the other or lies inside it.
fn overlaps(a: &str, b: &str) -> bool {
    let inside = |inner: &str, outer: &str| {
        inner
            .strip_prefix(outer)
            .is_some_and(|rest| rest.starts_with('.'))
    };
    a == b || inside(a, b) || inside(b, a)
}

/// Whether `path` is a secret or inside one.
fn is_secret(path: &str) -> bool {
    SECRETS.iter().any(|secret| overlaps(secret, path))
}

/// A serde message without the value it quotes: `invalid type: integer \`123\`, expected a
/// string` becomes `invalid type: integer (not shown), expected a string`.
fn without_values(message: &str) -> String {
    for marker in ["invalid type: ", "invalid value: "] {
        if let Some(at) = message.find(marker) {
            let start = at + marker.len();
            let end = message[start..]
                .find(", expected")
                .map_or(message.len(), |e| start + e);
            let kind = message[start..end]
                .split(['`', '"'])
                .next()
                .unwrap_or_default()
                .trim_end();
            return format!("{}{kind} (not shown){}", &message[..start], &message[end..]);
        }
    }
    message.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn types() -> toml::Table {
        "s = \"x\"\ni = 1\nf = 1.5\nb = true\nsecret = \"x\"\n[t]\nu = \"x\"\n[[a]]\nk = \"x\"\n"
            .parse()
            .unwrap()
    }

    #[test]
    fn values_take_their_field_type() {
        let t = types();
        let typed = |path: &str, raw: &str| typed(path, lookup(&t, path), raw);
        assert_eq!(typed("s", "123").unwrap(), toml::Value::from("123"));
        assert_eq!(typed("s", "true").unwrap(), toml::Value::from("true"));
        assert_eq!(typed("s", "\"q\"").unwrap(), toml::Value::from("\"q\""));
        assert_eq!(typed("i", "12").unwrap(), toml::Value::from(12));
        assert_eq!(typed("i", "100_000").unwrap(), toml::Value::from(100_000));
        assert_eq!(typed("f", "2").unwrap(), toml::Value::from(2.0));
        assert_eq!(typed("b", "false").unwrap(), toml::Value::from(false));
        assert_eq!(
            typed("i", "lots").unwrap_err(),
            "`i` expects an integer, got \"lots\""
        );
        assert!(typed("b", "yes").unwrap_err().contains("true or false"));
        assert!(typed("i", "1.5").is_err());
        // A table field takes TOML when the value looks like it, else the string.
        assert!(typed("t", "{ u = \"y\" }").unwrap().is_table());
        assert_eq!(
            typed("t", "http://x/").unwrap(),
            toml::Value::from("http://x/")
        );
        assert!(typed("a", "[{ k = \"y\" }]").unwrap().is_array());
        assert!(
            typed("t", "{ u = ")
                .unwrap_err()
                .contains("not a valid TOML value")
        );
        // No fixed type: the same.
        assert_eq!(typed("nope", "1").unwrap(), toml::Value::from("1"));
        assert!(typed("nope", "{}").unwrap().is_table());
    }

    #[test]
    fn secrets_are_not_shown() {
        let t: toml::Table = "[sendback]\ntoken = 1\n[aws]\ncredentials = []\n"
            .parse()
            .unwrap();
        let err = typed("sendback.token", lookup(&t, "sendback.token"), "s3cr3t").unwrap_err();
        assert!(
            !err.contains("s3cr3t") && err.contains("6 characters"),
            "{err}"
        );
        let err = typed("aws.credentials", lookup(&t, "aws.credentials"), "[{ x = ").unwrap_err();
        assert!(!err.contains("x ="), "{err}");
        assert_eq!(
            without_values("invalid type: integer `1234`, expected a string"),
            "invalid type: integer (not shown), expected a string"
        );
        assert_eq!(
            without_values("invalid value: string \"abc\", expected x"),
            "invalid value: string (not shown), expected x"
        );
        assert_eq!(without_values("missing field `url`"), "missing field `url`");
    }

    #[test]
    fn paths_overlap_when_one_holds_the_other() {
        assert!(overlaps("a.b", "a.b"));
        assert!(overlaps("a.b.c", "a.b"));
        assert!(overlaps("a", "a.b"));
        assert!(!overlaps("a.bc", "a.b"));
        assert!(!overlaps("", "a"));
    }
}
