//! Input: lines or NDJSON from a file or stdin, or a synthetic load, turned into records on a
//! reader thread and handed over through a bounded channel (so reading never runs ahead of
//! producing by more than the channel's capacity).

use crate::{Format, InputArgs};
use bytes::Bytes;
use kinesis_producer::UserRecord;
use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};
use std::io::{BufRead, BufReader, IsTerminal, Read};
use tokio::sync::mpsc;

/// Items the reader hands over before it waits for the producer.
const CHANNEL_CAPACITY: usize = 4096;
/// Random bytes behind generated records: each record is a slice of this pool (no copy).
const GENERATOR_POOL: usize = 1 << 20;

/// One input line (or generated record), numbered from 1.
#[derive(Debug)]
pub enum Item {
    /// A record to produce.
    Record {
        /// Line (or record) number.
        line: u64,
        /// The record.
        record: UserRecord,
    },
    /// A line that cannot become a record.
    Invalid {
        /// Line number.
        line: u64,
        /// Why.
        reason: String,
    },
    /// Reading stopped: the input could not be read further.
    ReadError(String),
}

/// Where items come from, resolved before the run starts (so a missing file is a setup error).
pub enum Source {
    /// Lines or NDJSON from a reader.
    Read {
        /// The file or stdin.
        reader: Box<dyn Read + Send>,
        /// How each line becomes a record.
        parser: LineParser,
    },
    /// A synthetic load.
    Generate {
        /// Records.
        count: u64,
        /// Data bytes per record.
        size: usize,
        /// Distinct partition keys.
        keys: u64,
    },
}

impl Source {
    /// Opens the input the options name.
    pub fn open(args: &InputArgs) -> Result<Source, String> {
        if let Some(count) = args.generate {
            return Ok(Source::Generate {
                count,
                size: args.record_size,
                keys: args.keys,
            });
        }
        let reader: Box<dyn Read + Send> = match &args.input {
            Some(path) if path.as_os_str() != "-" => Box::new(
                std::fs::File::open(path)
                    .map_err(|e| format!("cannot open {}: {e}", path.display()))?,
            ),
            _ => {
                if std::io::stdin().is_terminal() {
                    eprintln!("reading records from stdin (end with Ctrl-D; --generate N for a synthetic load)");
                }
                Box::new(std::io::stdin())
            }
        };
        Ok(Source::Read {
            reader,
            parser: LineParser {
                format: args.format,
                key: args.key.clone(),
                key_field: args.key_field.clone(),
                require_key: args.require_key,
                ehk_field: args.ehk_field.clone(),
                stream_field: args.stream_field.clone(),
                unkeyed: false,
            },
        })
    }

    /// The stream places records itself (`AUTO`): a line without a key is sent without one
    /// instead of with a random key.
    pub fn send_unkeyed(&mut self) {
        if let Source::Read { parser, .. } = self {
            parser.unkeyed = true;
        }
    }

    /// The number of records, when known in advance (for the progress bar).
    pub fn len(&self) -> Option<u64> {
        match self {
            Source::Generate { count, .. } => Some(*count),
            Source::Read { .. } => None,
        }
    }

    /// Starts the reader thread; items arrive on the returned channel, which closes at the end.
    pub fn spawn(self) -> mpsc::Receiver<Item> {
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        std::thread::Builder::new()
            .name("kpl-reader".into())
            .spawn(move || match self {
                Source::Read { reader, parser } => read_lines(reader, &parser, &tx),
                Source::Generate { count, size, keys } => generate(count, size, keys, &tx),
            })
            .expect("spawn the reader thread");
        rx
    }
}

/// How one line becomes a record.
#[derive(Debug, Clone)]
pub struct LineParser {
    /// Lines or NDJSON.
    pub format: Format,
    /// A fixed partition key.
    pub key: Option<String>,
    /// NDJSON: the field that holds the partition key.
    pub key_field: Option<String>,
    /// NDJSON: a line without the key field is invalid.
    pub require_key: bool,
    /// NDJSON: the field that holds the explicit hash key.
    pub ehk_field: Option<String>,
    /// NDJSON: the field that names the record's stream (absent: the producer's).
    pub stream_field: Option<String>,
    /// A record without a key gets none (the stream's distribution is `AUTO`), not a random one.
    pub unkeyed: bool,
}

/// A field by top-level name, or by JSON pointer when it starts with `/`.
fn field<'a>(value: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    let found = if name.starts_with('/') {
        value.pointer(name)
    } else {
        value.get(name)
    };
    found.filter(|v| !v.is_null())
}

/// A key from a JSON scalar: strings as they are, numbers and booleans as written.
fn scalar(value: &serde_json::Value, name: &str) -> Result<String, String> {
    match value {
        serde_json::Value::String(s) => Ok(s.clone()),
        serde_json::Value::Number(n) => Ok(n.to_string()),
        serde_json::Value::Bool(b) => Ok(b.to_string()),
        _ => Err(format!("field {name:?} is not a string, number or boolean")),
    }
}

/// A random partition key: 16 hex digits.
pub fn random_key(rng: &mut impl RngCore) -> String {
    format!("{:016x}", rng.next_u64())
}

impl LineParser {
    /// The record for one line (without its line terminator), or why there is none.
    pub fn parse(&self, line: &[u8], rng: &mut impl RngCore) -> Result<UserRecord, String> {
        let mut key = self.key.clone();
        let mut ehk = None;
        let mut stream = None;
        if self.format == Format::Ndjson {
            let value: serde_json::Value =
                serde_json::from_slice(line).map_err(|e| format!("invalid JSON: {e}"))?;
            if let Some(name) = &self.key_field {
                match field(&value, name) {
                    Some(v) => key = Some(scalar(v, name)?),
                    None if self.require_key => {
                        return Err(format!("key field {name:?} is missing"));
                    }
                    None => {}
                }
            }
            if let Some(name) = &self.ehk_field {
                ehk = field(&value, name).map(|v| scalar(v, name)).transpose()?;
            }
            if let Some(name) = &self.stream_field {
                stream = field(&value, name).map(|v| scalar(v, name)).transpose()?;
            }
        }
        let key = match key {
            Some(key) => key,
            None if self.unkeyed => String::new(),
            None => random_key(rng),
        };
        let mut record = UserRecord::new(key, Bytes::copy_from_slice(line));
        if let Some(h) = ehk {
            record = record.with_explicit_hash_key(h);
        }
        if let Some(s) = stream.filter(|s| !s.is_empty()) {
            record = record.to(s);
        }
        Ok(record)
    }
}

fn read_lines(reader: Box<dyn Read + Send>, parser: &LineParser, tx: &mpsc::Sender<Item>) {
    let mut reader = BufReader::with_capacity(256 * 1024, reader);
    let mut rng = SmallRng::from_rng(&mut rand::rng());
    let mut buf = Vec::new();
    let mut line = 0u64;
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) => {
                let _ = tx.blocking_send(Item::ReadError(format!(
                    "reading stopped after line {line}: {e}"
                )));
                return;
            }
        }
        line += 1;
        let text = buf
            .strip_suffix(b"\n")
            .map(|b| b.strip_suffix(b"\r").unwrap_or(b))
            .unwrap_or(&buf);
        if text.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let item = match parser.parse(text, &mut rng) {
            Ok(record) => Item::Record { line, record },
            Err(reason) => Item::Invalid { line, reason },
        };
        if tx.blocking_send(item).is_err() {
            return; // the run was interrupted
        }
    }
}

fn generate(count: u64, size: usize, keys: u64, tx: &mpsc::Sender<Item>) {
    let mut rng = SmallRng::from_rng(&mut rand::rng());
    let mut pool = vec![0u8; GENERATOR_POOL + size];
    rng.fill_bytes(&mut pool);
    let pool = Bytes::from(pool);
    for n in 1..=count {
        let start = rng.random_range(0..=GENERATOR_POOL);
        let key = format!("key-{}", rng.random_range(0..keys));
        let record = UserRecord::new(key, pool.slice(start..start + size));
        if tx.blocking_send(Item::Record { line: n, record }).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parser(format: Format) -> LineParser {
        LineParser {
            format,
            key: None,
            key_field: None,
            unkeyed: false,
            stream_field: None,
            require_key: false,
            ehk_field: None,
        }
    }

    #[test]
    fn lines_keep_the_line_as_data_and_a_fixed_or_random_key() {
        let mut rng = SmallRng::seed_from_u64(1);
        let r = parser(Format::Lines).parse(b"hello", &mut rng).unwrap();
        assert_eq!(&r.data[..], b"hello");
        assert_eq!(r.partition_key.len(), 16);
        let fixed = LineParser {
            key: Some("k".into()),
            ..parser(Format::Lines)
        };
        assert_eq!(fixed.parse(b"x", &mut rng).unwrap().partition_key, "k");
    }

    #[test]
    fn ndjson_key_fields() {
        let mut rng = SmallRng::seed_from_u64(1);
        let p = LineParser {
            key_field: Some("user".into()),
            ehk_field: Some("/route/h".into()),
            ..parser(Format::Ndjson)
        };
        let r = p
            .parse(br#"{"user":"u1","route":{"h":42}}"#, &mut rng)
            .unwrap();
        assert_eq!(r.partition_key, "u1");
        assert_eq!(r.explicit_hash_key.as_deref(), Some("42"));
        assert_eq!(&r.data[..], br#"{"user":"u1","route":{"h":42}}"#);
        let n = p.parse(br#"{"user":7}"#, &mut rng).unwrap();
        assert_eq!(n.partition_key, "7");
        let missing = p.parse(br#"{"other":1}"#, &mut rng).unwrap();
        assert_eq!(missing.partition_key.len(), 16, "random key");
        let auto = LineParser {
            unkeyed: true,
            ..p.clone()
        };
        assert!(
            auto.parse(br#"{"other":1}"#, &mut rng)
                .unwrap()
                .is_unkeyed(),
            "an AUTO stream: no key rather than a random one"
        );
        assert_eq!(
            auto.parse(br#"{"user":"u2"}"#, &mut rng)
                .unwrap()
                .partition_key,
            "u2"
        );
        assert!(p.parse(br#"{"user":[1]}"#, &mut rng).is_err());
        assert!(p
            .parse(b"{not json", &mut rng)
            .unwrap_err()
            .contains("invalid JSON"));
        let strict = LineParser {
            require_key: true,
            ..p
        };
        assert!(strict
            .parse(br#"{"user":null}"#, &mut rng)
            .unwrap_err()
            .contains("missing"));
    }
}
