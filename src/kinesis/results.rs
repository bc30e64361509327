//! Reading a successful PutRecords response: `{"Records":[{"SequenceNumber":…,"ShardId":…},
//! {"ErrorCode":…,"ErrorMessage":…},…],…}`, one result per record sent, in order.
//!
//! A single pass over the body that writes each result straight into a vector of the request's
//! size. Through `serde_json` the same body cost an intermediate vector of optional fields grown
//! by doubling, then a second one: about a sixth of the producer's CPU per unaggregated record.
//! Strings are borrowed from the body; one holding an escape (only an error message would) is
//! handed to `serde_json` to decode. Members other than the four read here are skipped whatever
//! they hold, in any order, with any whitespace; anything that is not JSON is an error.

use super::{ClientError, ClientErrorKind, PutRecordsResultEntry, SequenceNumber};
use bytes::Bytes;
use std::borrow::Cow;
use std::sync::Arc;

/// The results in a PutRecords response `body`, one per record sent (`n`), in order.
pub(crate) fn parse_results(
    body: &Bytes,
    n: usize,
) -> Result<Vec<PutRecordsResultEntry>, ClientError> {
    let mut out = Vec::with_capacity(n);
    Reader { body, at: 0 }.output(&mut out).map_err(|e| {
        ClientError::new(
            ClientErrorKind::Service,
            format!("PutRecords answered a body that is not its output: {e}"),
        )
    })?;
    if out.len() != n {
        return Err(ClientError::new(
            ClientErrorKind::Service,
            format!("PutRecords answered {} results for {n} records", out.len()),
        ));
    }
    Ok(out)
}

/// What is wrong with the body, and where.
struct Malformed {
    what: &'static str,
    at: usize,
}

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} at byte {}", self.what, self.at)
    }
}

type Read<T> = Result<T, Malformed>;

/// How many arrays and objects may nest, the top-level object included (`serde_json`'s limit:
/// its 128th fails). The top-level object is at depth 0.
const MAX_DEPTH: usize = 127;

struct Reader<'a> {
    /// The body, which sequence numbers are slices of.
    body: &'a Bytes,
    at: usize,
}

/// The four fields of one result.
#[derive(Default)]
struct Fields<'a> {
    shard_id: Option<Cow<'a, str>>,
    sequence_number: Option<Cow<'a, str>>,
    error_code: Option<Cow<'a, str>>,
    error_message: Option<Cow<'a, str>>,
}

impl<'a> Reader<'a> {
    fn fail<T>(&self, what: &'static str) -> Read<T> {
        Err(Malformed { what, at: self.at })
    }

    /// The next byte that is not whitespace, not consumed.
    fn peek(&mut self) -> Option<u8> {
        while let Some(&b) = self.body.get(self.at) {
            if !matches!(b, b' ' | b'\n' | b'\r' | b'\t') {
                return Some(b);
            }
            self.at += 1;
        }
        None
    }

    fn expect(&mut self, byte: u8, what: &'static str) -> Read<()> {
        if self.peek() != Some(byte) {
            return self.fail(what);
        }
        self.at += 1;
        Ok(())
    }

    /// The top-level object; its `Records` go into `out`.
    fn output(&mut self, out: &mut Vec<PutRecordsResultEntry>) -> Read<()> {
        let mut records = false;
        self.object(0, |r, key| match key {
            b"Records" if records => r.fail("`Records` twice"),
            b"Records" => {
                records = true;
                r.results(out)
            }
            _ => r.skip(1),
        })?;
        if self.peek().is_some() {
            return self.fail("trailing characters");
        }
        if !records {
            return self.fail("no `Records`");
        }
        Ok(())
    }

    /// The `Records` array.
    fn results(&mut self, out: &mut Vec<PutRecordsResultEntry>) -> Read<()> {
        let (mut shard_ids, mut codes) = (None, None);
        self.array(1, |r| {
            let mut f = Fields::default();
            r.object(2, |r, key| {
                let slot = match key {
                    b"ShardId" => &mut f.shard_id,
                    b"SequenceNumber" => &mut f.sequence_number,
                    b"ErrorCode" => &mut f.error_code,
                    b"ErrorMessage" => &mut f.error_message,
                    _ => return r.skip(3),
                };
                *slot = r.string_or_null()?;
                Ok(())
            })?;
            out.push(match (f.shard_id, f.sequence_number, f.error_code) {
                (Some(shard), Some(seq), None) => PutRecordsResultEntry::Ok {
                    shard_id: reuse(&mut shard_ids, &shard),
                    sequence_number: match seq {
                        Cow::Borrowed(seq) => SequenceNumber::within(r.body, seq),
                        Cow::Owned(seq) => seq.into(),
                    },
                },
                (_, _, code) => PutRecordsResultEntry::Err {
                    code: reuse(&mut codes, code.as_deref().unwrap_or("MissingResult")),
                    message: Arc::from(f.error_message.as_deref().unwrap_or("")),
                },
            });
            Ok(())
        })
    }

    /// An object at nesting `depth`, calling `member` with the reader on each member's value.
    fn object(
        &mut self,
        depth: usize,
        mut member: impl FnMut(&mut Self, &[u8]) -> Read<()>,
    ) -> Read<()> {
        self.sequence(depth, b'{', b'}', "expected an object", |r| {
            if r.peek() != Some(b'"') {
                return r.fail("expected a member name");
            }
            let name = r.name()?;
            r.expect(b':', "expected `:`")?;
            member(r, &name)
        })
    }

    /// An array at nesting `depth`, calling `element` with the reader on each element.
    fn array(&mut self, depth: usize, element: impl FnMut(&mut Self) -> Read<()>) -> Read<()> {
        self.sequence(depth, b'[', b']', "expected an array", element)
    }

    /// Items between `open` and `close`, separated by commas, at nesting `depth` (`what`: the
    /// error when `open` is not there).
    fn sequence(
        &mut self,
        depth: usize,
        open: u8,
        close: u8,
        what: &'static str,
        mut item: impl FnMut(&mut Self) -> Read<()>,
    ) -> Read<()> {
        if depth >= MAX_DEPTH {
            return self.fail("nested too deep");
        }
        self.expect(open, what)?;
        if self.peek() == Some(close) {
            self.at += 1;
            return Ok(());
        }
        loop {
            item(self)?;
            match self.peek() {
                Some(b',') => self.at += 1,
                Some(b) if b == close => {
                    self.at += 1;
                    return Ok(());
                }
                _ => return self.fail("expected `,` or the end of an array or object"),
            }
        }
    }

    /// A string, or `null` (`None`).
    fn string_or_null(&mut self) -> Read<Option<Cow<'a, str>>> {
        match self.peek() {
            Some(b'"') => self.string().map(Some),
            Some(b'n') => self.literal(b"null").map(|()| None),
            _ => self.fail("expected a string or null"),
        }
    }

    /// A string, borrowed from the body unless it holds an escape. The reader is at its quote.
    fn string(&mut self) -> Read<Cow<'a, str>> {
        let (start, inner, plain) = self.raw_string()?;
        if plain {
            // Printable ASCII: valid UTF-8 with nothing to check.
            return Ok(Cow::Borrowed(
                std::str::from_utf8(inner).unwrap_or_default(),
            ));
        }
        let quoted = &self.body[start..self.at];
        let bad = |what| Err(Malformed { what, at: start });
        if quoted.contains(&b'\\') {
            return match serde_json::from_slice::<String>(quoted) {
                Ok(s) => Ok(Cow::Owned(s)),
                Err(_) => bad("a string that is not valid JSON"),
            };
        }
        if inner.iter().any(|&b| b < 0x20) {
            return bad("a control character in a string");
        }
        match std::str::from_utf8(inner) {
            Ok(s) => Ok(Cow::Borrowed(s)),
            Err(_) => bad("a string that is not UTF-8"),
        }
    }

    /// A member's name, as bytes: borrowed when it is printable ASCII (as the names read here
    /// are), otherwise read as any string.
    fn name(&mut self) -> Read<Cow<'a, [u8]>> {
        let at = self.at;
        let (_, inner, plain) = self.raw_string()?;
        if plain {
            return Ok(Cow::Borrowed(inner));
        }
        self.at = at;
        Ok(match self.string()? {
            Cow::Borrowed(s) => Cow::Borrowed(s.as_bytes()),
            Cow::Owned(s) => Cow::Owned(s.into_bytes()),
        })
    }

    /// The bytes between a string's quotes (the reader at its opening quote, then past its
    /// closing one), and whether they are all printable ASCII with no escape.
    fn raw_string(&mut self) -> Read<(usize, &'a [u8], bool)> {
        let start = self.at;
        let mut at = start + 1;
        let mut plain = true;
        loop {
            at = plain_run(self.body, at);
            match self.body.get(at) {
                None => {
                    self.at = at;
                    return self.fail("unterminated string");
                }
                Some(b'"') => break,
                // A backslash and the byte it escapes; `string` has the escape checked.
                Some(b'\\') => {
                    plain = false;
                    at += 2;
                }
                Some(&b) => {
                    plain &= (0x20..0x80).contains(&b);
                    at += 1;
                }
            }
        }
        self.at = at + 1;
        Ok((start, &self.body[start + 1..at], plain))
    }

    fn literal(&mut self, word: &'static [u8]) -> Read<()> {
        if !self.body[self.at..].starts_with(word) {
            return self.fail("expected a JSON value");
        }
        self.at += word.len();
        Ok(())
    }

    /// Any value at nesting `depth`, checked and passed over.
    fn skip(&mut self, depth: usize) -> Read<()> {
        match self.peek() {
            Some(b'"') => self.string().map(drop),
            Some(b'{') => self.object(depth, |r, _| r.skip(depth + 1)),
            Some(b'[') => self.array(depth, |r| r.skip(depth + 1)),
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            Some(b'-' | b'0'..=b'9') => self.number(),
            _ => self.fail("expected a JSON value"),
        }
    }

    /// A number: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
    fn number(&mut self) -> Read<()> {
        let digits = |r: &mut Self| {
            let from = r.at;
            while r.body.get(r.at).is_some_and(u8::is_ascii_digit) {
                r.at += 1;
            }
            if r.at == from {
                r.fail("expected a digit")
            } else {
                Ok(r.at - from)
            }
        };
        if self.body.get(self.at) == Some(&b'-') {
            self.at += 1;
        }
        let first = self.body.get(self.at).copied();
        if digits(self)? > 1 && first == Some(b'0') {
            return self.fail("a number with a leading zero");
        }
        if self.body.get(self.at) == Some(&b'.') {
            self.at += 1;
            digits(self)?;
        }
        if matches!(self.body.get(self.at), Some(b'e' | b'E')) {
            self.at += 1;
            if matches!(self.body.get(self.at), Some(b'+' | b'-')) {
                self.at += 1;
            }
            digits(self)?;
        }
        Ok(())
    }
}

/// The index of the first byte from `at` on that is not printable ASCII other than a quote or
/// a backslash (or the end of `body`), eight bytes at a time while eight are left.
fn plain_run(body: &[u8], mut at: usize) -> usize {
    const ONES: u64 = u64::from_le_bytes([1; 8]);
    const HIGH: u64 = ONES * 0x80;
    // A byte of `x` is flagged by `zero(x)` when it is zero, and possibly the bytes above a
    // flagged one: the lowest flag is exact.
    let zero = |x: u64| x.wrapping_sub(ONES) & !x;
    while let Some(chunk) = body.get(at..at + 8) {
        let w = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
        let stop = (zero(w ^ (ONES * u64::from(b'"')))
            | zero(w ^ (ONES * u64::from(b'\\')))
            | w.wrapping_sub(ONES * 0x20) & !w
            | w)
            & HIGH;
        if stop != 0 {
            return at + stop.trailing_zeros() as usize / 8;
        }
        at += 8;
    }
    while body
        .get(at)
        .is_some_and(|&b| (0x20..0x80).contains(&b) && b != b'"' && b != b'\\')
    {
        at += 1;
    }
    at
}

/// `s` as an `Arc`, the previous one's when it is the same string: the results of one shard
/// come together (the collector packs a shard's records in a row), as do the codes of a
/// throttled run, so they share one allocation instead of one each.
fn reuse(last: &mut Option<Arc<str>>, s: &str) -> Arc<str> {
    match last {
        Some(a) if **a == *s => a.clone(),
        _ => last.insert(s.into()).clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{json, Value};

    /// `parse_results` on a copy of `body`.
    fn parse(body: impl AsRef<[u8]>, n: usize) -> Result<Vec<PutRecordsResultEntry>, ClientError> {
        parse_results(&Bytes::copy_from_slice(body.as_ref()), n)
    }

    /// What the results of `body` are by the API's definition, through `serde_json`'s own
    /// reader: the reference the single pass is compared with.
    fn reference(body: &[u8], n: usize) -> Option<Vec<PutRecordsResultEntry>> {
        let v: Value = serde_json::from_slice(body).ok()?;
        let records = v.as_object()?.get("Records")?.as_array()?;
        let field = |r: &serde_json::Map<String, Value>, k: &str| match r.get(k) {
            None | Some(Value::Null) => Some(None),
            Some(Value::String(s)) => Some(Some(s.clone())),
            Some(_) => None,
        };
        let mut out = Vec::new();
        for r in records {
            let r = r.as_object()?;
            let (shard, seq) = (field(r, "ShardId")?, field(r, "SequenceNumber")?);
            let (code, message) = (field(r, "ErrorCode")?, field(r, "ErrorMessage")?);
            out.push(match (shard, seq, code) {
                (Some(shard), Some(seq), None) => PutRecordsResultEntry::Ok {
                    shard_id: shard.into(),
                    sequence_number: seq.into(),
                },
                (_, _, code) => PutRecordsResultEntry::Err {
                    code: code.as_deref().unwrap_or("MissingResult").into(),
                    message: message.as_deref().unwrap_or("").into(),
                },
            });
        }
        (out.len() == n).then_some(out)
    }

    /// Whether `serde_json` refuses `body` only for a number beyond `f64` (valid JSON, which
    /// its `Value` cannot hold and the single pass rightly skips).
    fn out_of_range(body: &[u8]) -> bool {
        serde_json::from_slice::<Value>(body)
            .is_err_and(|e| e.to_string().starts_with("number out of range"))
    }

    /// Members a service may add, of every kind of JSON value.
    fn extra() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            (-1e300f64..1e300).prop_map(Value::from),
            "\\PC{0,12}".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 12, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                prop::collection::btree_map("[A-Za-z]{1,8}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// A response of `n` results, stored or not, with fields in any order, extra members and
    /// strings that need escaping, written compact or pretty.
    fn response() -> impl Strategy<Value = (Vec<u8>, usize)> {
        let result = (
            any::<bool>(),
            "[0-9]{1,56}",
            "shardId-0000000000[0-9]{2}",
            "[A-Za-z]{1,40}",
            "\\PC{0,30}",
            prop::collection::vec(("[A-Z][a-z]{1,10}", extra()), 0..3),
            any::<bool>(),
        )
            .prop_map(|(ok, seq, shard, code, message, extras, null_code)| {
                let mut r = serde_json::Map::new();
                for (k, v) in extras {
                    r.insert(k, v);
                }
                if ok {
                    r.insert("ShardId".into(), json!(shard));
                    r.insert("SequenceNumber".into(), json!(seq));
                    if null_code {
                        r.insert("ErrorCode".into(), Value::Null);
                    }
                } else {
                    r.insert("ErrorCode".into(), json!(code));
                    r.insert("ErrorMessage".into(), json!(message));
                }
                Value::Object(r)
            });
        (
            prop::collection::vec(result, 0..12),
            prop::collection::vec(("[A-Z][a-z]{1,10}", extra()), 0..3),
            any::<bool>(),
        )
            .prop_map(|(records, extras, pretty)| {
                let n = records.len();
                let mut top = serde_json::Map::new();
                for (k, v) in extras {
                    top.insert(k, v);
                }
                top.insert("Records".into(), Value::from(records));
                let top = Value::Object(top);
                let body = if pretty {
                    serde_json::to_vec_pretty(&top)
                } else {
                    serde_json::to_vec(&top)
                };
                (body.expect("serializes"), n)
            })
    }

    proptest! {
        /// Any response a service may send reads as `serde_json` reads it.
        #[test]
        fn any_response_reads_as_serde_json_reads_it((body, n) in response()) {
            let got = parse(&body, n).expect("a valid response");
            prop_assert_eq!(Some(got), reference(&body, n));
        }

        /// A response damaged anywhere (a byte changed, cut short) is read as `serde_json`
        /// reads it: the same results, or an error from both.
        #[test]
        fn a_damaged_response_reads_as_serde_json_reads_it(
            (body, n) in response(),
            at in any::<prop::sample::Index>(),
            byte in prop::sample::select(b"{}[]:,\"\\ 0-.eEtfnul\x01\xff".to_vec()),
            cut in any::<bool>(),
        ) {
            let mut body = body;
            let i = at.index(body.len());
            if cut {
                body.truncate(i);
            } else {
                body[i] = byte;
            }
            prop_assume!(!out_of_range(&body));
            prop_assert_eq!(parse(&body, n).ok(), reference(&body, n));
        }

        /// Whatever a service answers, reading it is an error or as many results as were sent.
        #[test]
        fn any_response_is_read_without_panicking(
            body in prop::collection::vec(any::<u8>(), 0..300),
            n in 0usize..4,
        ) {
            if let Ok(results) = parse(&body, n) {
                prop_assert_eq!(results.len(), n);
            }
        }
    }

    /// A sequence number is a slice of the response's body, not a copy; one written with an
    /// escape is unescaped into its own buffer.
    #[test]
    fn sequence_numbers_are_slices_of_the_body() {
        let body = Bytes::from_static(
            br#"{"Records":[{"SequenceNumber":"495","ShardId":"s"},{"SequenceNumber":"49\u0036","ShardId":"s"}]}"#,
        );
        let got = parse_results(&body, 2).expect("parsed");
        let seq = |i: usize| match &got[i] {
            PutRecordsResultEntry::Ok {
                sequence_number, ..
            } => sequence_number.as_str(),
            other => panic!("{other:?}"),
        };
        let within = |s: &str| body.as_ptr_range().contains(&s.as_ptr());
        assert_eq!((seq(0), within(seq(0))), ("495", true));
        assert_eq!((seq(1), within(seq(1))), ("496", false));
    }

    #[test]
    fn results_are_read_in_order_with_errors_and_unknown_fields() {
        let body = br#"{"FailedRecordCount":1,"EncryptionType":"NONE","Records":[
            {"SequenceNumber":"495","ShardId":"shardId-000000000001"},
            {"ErrorCode":"ProvisionedThroughputExceededException","ErrorMessage":"Rate \"exceeded\""},
            {"SequenceNumber":"496","ShardId":"shardId-000000000001","ErrorCode":null},
            {"SequenceNumber":"497","ShardId":"shardId-000000000001","ErrorCode":"InternalFailure"},
            {"ErrorCode":"InternalFailure"}]}"#;
        let got = parse(body, 5).expect("parsed");
        let ok = |shard: &str, seq: &str| PutRecordsResultEntry::Ok {
            shard_id: shard.into(),
            sequence_number: seq.into(),
        };
        let err = |code: &str, message: &str| PutRecordsResultEntry::Err {
            code: code.into(),
            message: message.into(),
        };
        assert_eq!(
            got,
            vec![
                ok("shardId-000000000001", "495"),
                err(
                    "ProvisionedThroughputExceededException",
                    "Rate \"exceeded\""
                ),
                ok("shardId-000000000001", "496"),
                err("InternalFailure", ""),
                err("InternalFailure", ""),
            ]
        );
    }

    #[test]
    fn a_response_that_does_not_match_the_request_is_an_error() {
        let one = br#"{"Records":[{"SequenceNumber":"1","ShardId":"s"}]}"#;
        let e = parse(one, 2).expect_err("count");
        assert!(e.message.contains("1 results for 2 records"), "{e}");
        let e = parse(b"<html>", 1).expect_err("not JSON");
        assert_eq!(e.kind, ClientErrorKind::Service);
        assert!(e.message.contains("not its output"), "{e}");
        // A result with neither a sequence number nor a code is a failure, not a success.
        let got = parse(br#"{"Records":[{"ShardId":"s"}]}"#, 1).expect("parsed");
        assert!(
            matches!(&got[0], PutRecordsResultEntry::Err { code, .. } if &**code == "MissingResult")
        );
    }

    #[test]
    fn a_string_repeated_in_a_row_shares_one_allocation() {
        let mut last = None;
        let a = reuse(&mut last, "shardId-000000000001");
        let b = reuse(&mut last, "shardId-000000000001");
        let c = reuse(&mut last, "shardId-000000000002");
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(&*c, "shardId-000000000002");
        assert!(!Arc::ptr_eq(&b, &c));
    }

    #[test]
    fn values_are_checked_as_json_defines_them() {
        let values = [
            "0",
            "-0",
            "12",
            "-0.5e+3",
            "1E9",
            "1.25",
            "01",
            "-",
            "1.",
            ".5",
            "1e",
            "1e+",
            "+1",
            "true",
            "tru",
            "truex",
            "null",
            "nul",
            "false",
            "\"a\\u00e9\"",
            "\"a\\x\"",
            "[]",
            "[1,]",
            "{}",
            "{\"a\":}",
            "{\"a\" 1}",
            "[1 2]",
            "[1}",
            "{\"a\":1]",
        ];
        for v in values {
            for body in [
                format!(r#"{{"x":{v},"Records":[]}}"#),
                format!(r#"{{"Records":[{{"ErrorCode":"E","x":{v}}}]}}"#),
            ] {
                let n = usize::from(body.contains("ErrorCode"));
                let expected = reference(body.as_bytes(), n);
                assert_eq!(parse(body.as_bytes(), n).ok(), expected, "{body}");
            }
        }
        for (body, ok) in [
            ("{\"Records\":[]} \n\t", true),
            ("{\"Records\":[]} x", false),
            ("{\"Records\":[]}{}", false),
            ("{\"Records\":[],\"Records\":[]}", false),
            ("{}", false),
            ("", false),
        ] {
            assert_eq!(parse(body.as_bytes(), 0).is_ok(), ok, "{body}");
        }
    }

    #[test]
    fn a_plain_run_stops_at_the_first_byte_that_is_not_plain() {
        for b in 0..=255u8 {
            let plain = (0x20..0x80).contains(&b) && b != b'"' && b != b'\\';
            for at in 0..20 {
                let mut body = vec![b'a'; 20];
                body[at] = b;
                body[19.min(at + 3)] = b'"';
                let stop = if plain { 19.min(at + 3) } else { at };
                assert_eq!(
                    plain_run(&body, 0),
                    if at == 19 { at } else { stop },
                    "{b:#x} at {at}"
                );
            }
        }
        assert_eq!(plain_run(b"abc", 0), 3);
        assert_eq!(plain_run(b"abcdefghijk\"", 2), 11);
    }

    #[test]
    fn nesting_deeper_than_serde_json_allows_is_an_error() {
        let deep = |d: usize| {
            format!(
                r#"{{"x":{}1{},"Records":[]}}"#,
                "[".repeat(d),
                "]".repeat(d)
            )
        };
        let deep_objects = |d: usize| {
            format!(
                r#"{{"x":{}1{},"Records":[]}}"#,
                r#"{"a":"#.repeat(d),
                "}".repeat(d)
            )
        };
        // The same limit as `serde_json`'s, to the level, for arrays and objects.
        for d in 120..=136 {
            for body in [deep(d), deep_objects(d)] {
                let got = parse(body.as_bytes(), 0);
                let expected = reference(body.as_bytes(), 0).is_some();
                assert_eq!(got.is_ok(), expected, "depth {d}: {body}");
            }
        }
        let e = parse(deep(200).as_bytes(), 0).expect_err("too deep");
        assert!(e.message.contains("nested too deep"), "{e}");
    }

    #[test]
    fn a_value_of_the_wrong_kind_is_named() {
        for (body, what) in [
            (&b"[]"[..], "expected an object"),
            (br#"{"Records":{}}"#, "expected an array"),
            (br#"{"Records":[[]]}"#, "expected an object"),
            (
                br#"{"Records":[{"ShardId":1}]}"#,
                "expected a string or null",
            ),
        ] {
            let e = parse(body, 0).expect_err("wrong kind");
            assert!(e.message.contains(what), "{e}");
        }
    }
}
