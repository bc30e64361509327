//! The API model's constraints, each sentence written once. A broken constraint reads
//! `Value '<v>' at '<member path>' failed to satisfy constraint: Member must <rule>` (or
//! `Value null at ...`); [`Checks`] gathers the violations of one request and turns them
//! into the single `ValidationException` ("N validation error(s) detected: a; b") that AWS
//! sends, and the helpers below check one member and fail at once.

use std::fmt::Display;

use super::error::ApiError;

/// The ExplicitHashKey / NewStartingHashKey pattern of the API model.
pub(crate) const HASH_KEY_PATTERN: &str = "0|([1-9]\\d{0,38})";

/// The StreamARN pattern of the API model.
pub(crate) const STREAM_ARN_PATTERN: &str = "arn:aws.*:kinesis:.*:\\d{12}:stream/\\S+";

/// Whether `s` matches [`STREAM_ARN_PATTERN`] (partition `aws*`, service `kinesis`, a
/// 12-digit account, a non-empty stream name without whitespace).
pub(crate) fn is_stream_arn(s: &str) -> bool {
    let parts: Vec<&str> = s.splitn(6, ':').collect();
    let [arn, partition, service, _region, account, resource] = parts[..] else {
        return false;
    };
    let name = resource.strip_prefix("stream/").unwrap_or("");
    arn == "arn"
        && partition.starts_with("aws")
        && service == "kinesis"
        && account.len() == 12
        && account.bytes().all(|b| b.is_ascii_digit())
        && !name.is_empty()
        && !name.chars().any(char::is_whitespace)
}

/// One rule of the API model.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Rule<'a> {
    NotNull,
    LengthAtLeast(usize),
    LengthAtMost(usize),
    ValueAtLeast(i64),
    ValueAtMost(i64),
    Pattern(&'a str),
    OneOf(&'a [&'a str]),
}

impl Display for Rule<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rule::NotNull => write!(f, "not be null"),
            Rule::LengthAtLeast(n) => write!(f, "have length greater than or equal to {n}"),
            Rule::LengthAtMost(n) => write!(f, "have length less than or equal to {n}"),
            Rule::ValueAtLeast(n) => write!(f, "have value greater than or equal to {n}"),
            Rule::ValueAtMost(n) => write!(f, "have value less than or equal to {n}"),
            Rule::Pattern(p) => write!(f, "satisfy regular expression pattern: {p}"),
            Rule::OneOf(set) => write!(f, "satisfy enum value set: [{}]", set.join(", ")),
        }
    }
}

/// The sentence for one broken rule; `value` is `None` for a missing member.
pub(crate) fn violation(value: Option<&dyn Display>, path: &dyn Display, rule: Rule) -> String {
    let value = match value {
        Some(v) => format!("'{v}'"),
        None => "null".to_string(),
    };
    format!("Value {value} at '{path}' failed to satisfy constraint: Member must {rule}")
}

/// The violations found in one request so far.
#[derive(Debug, Default)]
pub(crate) struct Checks(Vec<String>);

impl Checks {
    /// Records a violation of `rule` unless `ok`.
    pub fn check(&mut self, ok: bool, value: Option<&dyn Display>, path: &dyn Display, rule: Rule) {
        if !ok {
            self.0.push(violation(value, path, rule));
        }
    }

    /// Records a `NotNull` violation when `v` is missing.
    pub fn present<T>(&mut self, v: &Option<T>, path: &dyn Display) {
        self.check(v.is_some(), None, path, Rule::NotNull);
    }

    /// One `ValidationException` listing every violation, or `Ok` when there is none.
    pub fn done(self) -> Result<(), ApiError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ApiError::validation(&self.0))
        }
    }
}

/// A single broken rule as a `ValidationException`.
pub(crate) fn fail(value: Option<&dyn Display>, path: &dyn Display, rule: Rule) -> ApiError {
    ApiError::validation(&[violation(value, path, rule)])
}

/// The member's value, or the `NotNull` error.
pub(crate) fn required<T>(v: Option<T>, path: &dyn Display) -> Result<T, ApiError> {
    v.ok_or_else(|| fail(None, path, Rule::NotNull))
}

/// An integer member within `min..=max`.
pub(crate) fn int_in(v: i64, path: &dyn Display, min: i64, max: i64) -> Result<i64, ApiError> {
    if v < min {
        Err(fail(Some(&v), path, Rule::ValueAtLeast(min)))
    } else if v > max {
        Err(fail(Some(&v), path, Rule::ValueAtMost(max)))
    } else {
        Ok(v)
    }
}

/// An optional integer member: its value within `min..=max`, or `default` when absent.
pub(crate) fn int_or(
    v: Option<i64>,
    default: i64,
    path: &dyn Display,
    min: i64,
    max: i64,
) -> Result<i64, ApiError> {
    int_in(v.unwrap_or(default), path, min, max)
}

/// A string member of an enum (`"null"` in the message when missing, as AWS writes it).
pub(crate) fn one_of<'s>(
    v: Option<&'s str>,
    path: &dyn Display,
    set: &[&str],
) -> Result<&'s str, ApiError> {
    match v {
        Some(s) if set.contains(&s) => Ok(s),
        other => Err(fail(Some(&other.unwrap_or("null")), path, Rule::OneOf(set))),
    }
}

/// A string member whose length, in `unit`s counted by the caller, is within `min..=max`.
pub(crate) fn length_in(
    shown: &dyn Display,
    len: usize,
    path: &dyn Display,
    min: usize,
    max: usize,
) -> Result<(), ApiError> {
    if len < min {
        Err(fail(Some(shown), path, Rule::LengthAtLeast(min)))
    } else if len > max {
        Err(fail(Some(shown), path, Rule::LengthAtMost(max)))
    } else {
        Ok(())
    }
}

/// Member path of a PutRecords entry's field (`records.N.member.<field>`, 1-based), or the
/// bare field for PutRecord.
#[derive(Clone, Copy)]
pub(crate) struct MemberPath {
    pub index: Option<usize>,
    pub field: &'static str,
}

impl Display for MemberPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.index {
            Some(i) => write!(f, "records.{}.member.{}", i + 1, self.field),
            None => f.write_str(self.field),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentences() {
        assert_eq!(
            violation(None, &"streamName", Rule::NotNull),
            "Value null at 'streamName' failed to satisfy constraint: Member must not be null"
        );
        let p = MemberPath {
            index: Some(3),
            field: "data",
        };
        assert_eq!(
            fail(Some(&"x"), &p, Rule::LengthAtMost(5)).message.unwrap(),
            "1 validation error detected: Value 'x' at 'records.4.member.data' failed to \
             satisfy constraint: Member must have length less than or equal to 5"
        );
        let mut c = Checks::default();
        c.present::<u8>(&None, &"a");
        c.check(false, Some(&""), &"b", Rule::Pattern("[a-z]+"));
        assert_eq!(
            c.done().unwrap_err().message.unwrap(),
            "2 validation errors detected: Value null at 'a' failed to satisfy constraint: \
             Member must not be null; Value '' at 'b' failed to satisfy constraint: Member \
             must satisfy regular expression pattern: [a-z]+"
        );
        assert_eq!(
            one_of(None, &"t", &["A", "B"])
                .unwrap_err()
                .message
                .unwrap(),
            "1 validation error detected: Value 'null' at 't' failed to satisfy constraint: \
             Member must satisfy enum value set: [A, B]"
        );
        assert_eq!(int_in(0, &"n", 1, 9).unwrap_err().status, 400);
        assert_eq!(
            int_in(10, &"n", 1, 9).unwrap_err().kind,
            "ValidationException"
        );
        assert_eq!(int_or(None, 5, &"n", 1, 9).unwrap(), 5);
        assert!(is_stream_arn(
            "arn:aws:kinesis:us-east-1:123456789012:stream/a/b"
        ));
        assert!(!is_stream_arn(
            "arn:aws:kinesis:us-east-1:12345678901:stream/a"
        ));
        assert!(!is_stream_arn(
            "arn:aws:kinesis:us-east-1:123456789012:stream/"
        ));
        assert!(!is_stream_arn("nope"));
    }
}
