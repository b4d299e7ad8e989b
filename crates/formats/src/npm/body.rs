//! Reading the body of `PUT /{name}` as a stream.
//!
//! `npm publish` sends the tarball base64-encoded inside the JSON body, as
//! the `data` string of the one entry of `_attachments`. That string is
//! decoded and hashed as it is read and handed to a sink chunk by chunk;
//! everything else in the body is metadata, read into memory up to
//! [`BodyLimits::max_metadata_bytes`]. JSON does not order object members,
//! so nothing is checked here that needs two members: the caller checks the
//! body once it has ended ([`PutBody::into_request`]).

use std::io::{self, BufRead};

use base64::DecodeError;
use base64::engine::Engine as _;
use serde::de::IgnoredAny;
use serde_json::{Map, Value};
use sha1::Sha1;
use sha2::{Digest as _, Sha512};

use super::publish::BASE64;
use crate::FormatError;

/// Limits on reading a `PUT /{name}` body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyLimits {
    /// Most bytes of the body outside attachments' `data` strings: the JSON
    /// that is read (413 beyond).
    pub max_metadata_bytes: u64,
    /// Most JSON values (strings, numbers, arrays, objects, …) of that
    /// kept in memory as parsed values, each some 100 bytes besides its
    /// text (413 beyond). Members no check uses are not kept.
    pub max_metadata_values: u64,
    /// Largest tarball, decoded (413 beyond).
    pub max_tarball_bytes: u64,
}

/// The size and digests of the tarball, computed while it was streamed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TarballDigests {
    /// Decoded size in bytes.
    pub size: u64,
    /// sha1 (npm's `dist.shasum`).
    pub sha1: [u8; 20],
    /// sha512 (npm's `dist.integrity`).
    pub sha512: [u8; 64],
}

/// Why a body could not be read.
#[derive(Debug)]
pub enum BodyError {
    /// The body is refused: malformed, or over a limit.
    Format(FormatError),
    /// The reader failed (the body broke off) or the sink did (the tarball
    /// could not be kept); the caller knows which, and why.
    Io(io::Error),
}

impl From<FormatError> for BodyError {
    fn from(e: FormatError) -> Self {
        BodyError::Format(e)
    }
}

impl From<io::Error> for BodyError {
    fn from(e: io::Error) -> Self {
        BodyError::Io(e)
    }
}

/// A `PUT /{name}` body once read: the members a publish or an update
/// uses, with `versions` kept as JSON text (an update reads little of it)
/// and `_attachments`, when it is an object, as a list without the tarball.
#[derive(Debug)]
pub struct PutBody {
    /// Members other than `versions`.
    pub(crate) fields: Map<String, Value>,
    pub(crate) versions: Versions,
    pub(crate) attachments: Option<Vec<Attachment>>,
    /// How many more values may be parsed into memory, of
    /// [`BodyLimits::max_metadata_values`].
    pub(crate) values_left: u64,
    pub(crate) max_values: u64,
}

/// The `versions` member of a body.
#[derive(Debug)]
pub(crate) enum Versions {
    /// Missing or null.
    Absent,
    /// Neither null nor an object.
    NotObject,
    /// Each version (once, the last given winning, in the order first
    /// given) and its manifest's JSON text, checked to be valid JSON.
    Raw(Vec<RawManifest>),
}

/// One manifest of `versions`, as JSON text.
#[derive(Debug)]
pub(crate) struct RawManifest {
    pub version: String,
    pub json: Vec<u8>,
    /// How many values parsing it makes.
    pub values: u64,
}

/// One member of `_attachments`.
#[derive(Debug)]
pub(crate) struct Attachment {
    /// The member name (the tarball's file name).
    pub file: String,
    /// Its value: `None` when it is not a JSON object.
    pub fields: Option<Map<String, Value>>,
    pub data: Data,
}

/// The `data` member of an attachment.
#[derive(Debug)]
pub(crate) enum Data {
    /// Missing, or not a string.
    Absent,
    /// Decoded and handed to the sink (the first attachment only).
    Streamed(TarballDigests),
    /// Not valid base64 (the message says why); the rest was skipped.
    Invalid(String),
    /// A string that was read past, not decoded (later attachments).
    Skipped,
}

impl PutBody {
    /// Whether the body carries tarballs (`_attachments` is present, not
    /// null and not empty): `npm publish`. Otherwise it is a metadata update.
    pub fn is_publish(&self) -> bool {
        match &self.attachments {
            Some(list) => !list.is_empty(),
            None => !matches!(self.fields.get("_attachments"), None | Some(Value::Null)),
        }
    }
}

/// Reads a `PUT /{name}` body from `reader`. The `data` string of the first
/// attachment is base64-decoded, hashed and passed to `sink` in chunks of
/// at most a few hundred KiB as it arrives; nothing of it is kept. A `data`
/// string that is not valid base64 is not an error yet (see
/// [`PutBody::into_request`], which reports problems in a fixed order); the
/// sink may then have received part of it. The `data` strings of further
/// attachments are read past.
///
/// Errors: [`BodyError::Format`] for a body that is not a JSON object
/// (400), more metadata than `limits.max_metadata_bytes` or
/// `limits.max_metadata_values`, or a tarball larger than
/// `limits.max_tarball_bytes` (413), a member `_attachments`
/// or an attachment given twice, an attachment with two `data` members;
/// [`BodyError::Io`] when `reader` or `sink` fails.
pub fn read_put_body<R: BufRead>(
    reader: R,
    limits: &BodyLimits,
    sink: &mut dyn FnMut(&[u8]) -> io::Result<()>,
) -> Result<PutBody, BodyError> {
    let mut p = Parser {
        r: reader,
        pos: 0,
        meta: 0,
        values: 0,
        limits: *limits,
        sink: Some(sink),
    };
    p.body()
}

fn not_json(why: impl std::fmt::Display) -> BodyError {
    BodyError::Format(FormatError::invalid(format!(
        "the request body is not valid JSON: {why}"
    )))
}

/// More JSON was parsed into memory than `max` values.
pub(crate) fn too_many_values(max: u64) -> FormatError {
    FormatError::too_large(format!(
        "the request body has more than {max} JSON values besides the tarball"
    ))
}

fn invalid(msg: String) -> BodyError {
    BodyError::Format(FormatError::Invalid(msg))
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// The members of a body that publishes or updates use; others (`time`,
/// `maintainers`, `description`, …) are checked and dropped.
const USED: [&str; 5] = ["name", "_id", "_rev", "dist-tags", "readme"];

/// Base64 decoded per segment of this many characters (a multiple of 4).
const SEGMENT: usize = 256 << 10;

struct Parser<'s, R> {
    r: R,
    /// Bytes consumed so far.
    pos: u64,
    /// Bytes consumed outside attachments' `data` strings.
    meta: u64,
    /// JSON values parsed into memory.
    values: u64,
    limits: BodyLimits,
    /// Lent to the [`Decoder`] while a `data` string is streamed.
    sink: Option<Sink<'s>>,
}

impl<R: BufRead> Parser<'_, R> {
    fn fill(&mut self) -> Result<&[u8], BodyError> {
        loop {
            match self.r.fill_buf() {
                Ok(_) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(BodyError::Io(e)),
            }
        }
        // Buffered now: this returns what the call above filled.
        self.r.fill_buf().map_err(BodyError::Io)
    }

    fn peek(&mut self) -> Result<Option<u8>, BodyError> {
        Ok(self.fill()?.first().copied())
    }

    /// Consumes `n` bytes of metadata.
    fn take_meta(&mut self, n: usize) -> Result<(), BodyError> {
        self.r.consume(n);
        self.pos += n as u64;
        self.meta += n as u64;
        if self.meta > self.limits.max_metadata_bytes {
            return Err(BodyError::Format(FormatError::too_large(format!(
                "the request body has more than {} bytes of JSON besides the tarball",
                self.limits.max_metadata_bytes
            ))));
        }
        Ok(())
    }

    /// Consumes `n` bytes of a `data` string.
    fn take_data(&mut self, n: usize) {
        self.r.consume(n);
        self.pos += n as u64;
    }

    fn next(&mut self) -> Result<u8, BodyError> {
        let b = self.peek()?.ok_or_else(|| self.eof())?;
        self.take_meta(1)?;
        Ok(b)
    }

    fn eof(&self) -> BodyError {
        not_json(format_args!("it ends early, at byte {}", self.pos))
    }

    fn unexpected(&self, b: u8, expected: &str) -> BodyError {
        not_json(format_args!(
            "expected {expected} at byte {}, found {:?}",
            self.pos,
            char::from(b)
        ))
    }

    /// Skips whitespace; the next byte, not consumed.
    fn ws(&mut self) -> Result<Option<u8>, BodyError> {
        loop {
            let buf = self.fill()?;
            let n = buf.iter().take_while(|b| is_ws(**b)).count();
            if n == 0 {
                return Ok(buf.first().copied());
            }
            self.take_meta(n)?;
        }
    }

    fn expect(&mut self, want: u8, expected: &str) -> Result<(), BodyError> {
        match self.ws()? {
            Some(b) if b == want => self.take_meta(1),
            Some(b) => Err(self.unexpected(b, expected)),
            None => Err(self.eof()),
        }
    }

    /// After a member: `,` (true, another follows) or `}` (false).
    fn more(&mut self) -> Result<bool, BodyError> {
        match self.ws()? {
            Some(b',') => self.take_meta(1).map(|()| true),
            Some(b'}') => self.take_meta(1).map(|()| false),
            Some(b) => Err(self.unexpected(b, "',' or '}'")),
            None => Err(self.eof()),
        }
    }

    /// After `{`: whether the object is empty (its `}` consumed).
    fn empty_object(&mut self) -> Result<bool, BodyError> {
        if self.ws()? == Some(b'}') {
            self.take_meta(1)?;
            return Ok(true);
        }
        Ok(false)
    }

    /// A member name and its `:`.
    fn key(&mut self) -> Result<String, BodyError> {
        let mut raw = Vec::new();
        match self.ws()? {
            Some(b'"') => self.capture_string(&mut raw)?,
            Some(b) => return Err(self.unexpected(b, "a member name")),
            None => return Err(self.eof()),
        }
        let key = serde_json::from_slice::<String>(&raw)
            .map_err(|e| not_json(format_args!("a member name: {e}")))?;
        self.expect(b':', "':'")?;
        Ok(key)
    }

    /// Copies a string (the opening quote is next) to `out`, quotes
    /// included, escapes unresolved.
    fn capture_string(&mut self, out: &mut Vec<u8>) -> Result<(), BodyError> {
        out.push(self.next()?);
        loop {
            let buf = self.fill()?;
            if buf.is_empty() {
                return Err(self.eof());
            }
            let n = buf.iter().position(|b| *b == b'"' || *b == b'\\');
            let run = n.unwrap_or(buf.len());
            out.extend_from_slice(&buf[..run]);
            self.take_meta(run)?;
            match n {
                None => {}
                Some(_) => {
                    let b = self.next()?;
                    out.push(b);
                    if b == b'"' {
                        return Ok(());
                    }
                    out.push(self.next()?); // the escaped byte
                }
            }
        }
    }

    /// Copies one JSON value to `out`, finding its end without checking
    /// its insides (the caller parses what was copied). Returns how many
    /// values it holds (itself included; exact unless it has empty arrays
    /// or objects, which count twice).
    fn capture(&mut self, out: &mut Vec<u8>) -> Result<u64, BodyError> {
        match self.ws()? {
            None => Err(self.eof()),
            Some(b'"') => self.capture_string(out).map(|()| 1),
            Some(b'{' | b'[') => {
                let mut depth = 0usize;
                // The container, then one per element: the first is
                // counted at its container's opening, the others at commas.
                let mut values = 1;
                loop {
                    match self.peek()? {
                        Some(b'"') => {
                            self.capture_string(out)?;
                            continue;
                        }
                        Some(_) => {}
                        None => return Err(self.eof()),
                    }
                    let b = self.next()?;
                    out.push(b);
                    match b {
                        b'{' | b'[' => {
                            depth += 1;
                            values += 1;
                        }
                        b',' => values += 1,
                        b'}' | b']' => {
                            depth -= 1;
                            if depth == 0 {
                                return Ok(values);
                            }
                        }
                        _ => {}
                    }
                }
            }
            Some(_) => {
                // A number, true, false or null: up to the next delimiter.
                while let Some(b) = self.peek()? {
                    if is_ws(b) || matches!(b, b',' | b'}' | b']') {
                        break;
                    }
                    out.push(b);
                    self.take_meta(1)?;
                }
                match out.first() {
                    Some(_) => Ok(1),
                    None => match self.peek()? {
                        Some(b) => Err(self.unexpected(b, "a value")),
                        None => Err(self.eof()),
                    },
                }
            }
        }
    }

    /// One member value, parsed: it counts against
    /// [`BodyLimits::max_metadata_values`].
    fn value(&mut self, key: &str) -> Result<Value, BodyError> {
        let mut raw = Vec::new();
        self.values += self.capture(&mut raw)?;
        if self.values > self.limits.max_metadata_values {
            return Err(BodyError::Format(too_many_values(
                self.limits.max_metadata_values,
            )));
        }
        serde_json::from_slice(&raw).map_err(|e| not_json(format_args!("{e} in the value of {key:?}")))
    }

    /// One member value, checked and dropped.
    fn skip_value(&mut self, key: &str) -> Result<(), BodyError> {
        let mut raw = Vec::new();
        self.capture(&mut raw)?;
        serde_json::from_slice::<IgnoredAny>(&raw)
            .map(|_| ())
            .map_err(|e| not_json(format_args!("{e} in the value of {key:?}")))
    }

    fn body(&mut self) -> Result<PutBody, BodyError> {
        match self.ws()? {
            Some(b'{') => self.take_meta(1)?,
            Some(_) => {
                // Not an object: say whether it is JSON at all.
                let mut raw = Vec::new();
                self.capture(&mut raw)?;
                self.end()?;
                return Err(match serde_json::from_slice::<IgnoredAny>(&raw) {
                    Ok(_) => invalid("the request body is not a JSON object".into()),
                    Err(e) => not_json(e),
                });
            }
            None => return Err(not_json("the body is empty")),
        }
        let mut body = PutBody {
            fields: Map::new(),
            versions: Versions::Absent,
            attachments: None,
            values_left: 0,
            max_values: self.limits.max_metadata_values,
        };
        let mut seen_attachments = false;
        if !self.empty_object()? {
            loop {
                let key = self.key()?;
                if key == "_attachments" {
                    if seen_attachments {
                        return Err(invalid(
                            "the request body has more than one \"_attachments\" member".into(),
                        ));
                    }
                    seen_attachments = true;
                    if self.ws()? == Some(b'{') {
                        body.attachments = Some(self.attachments()?);
                    } else {
                        let v = self.value(&key)?;
                        body.fields.insert(key, v);
                    }
                } else if key == "versions" {
                    body.versions = match self.ws()? {
                        Some(b'{') => Versions::Raw(self.raw_versions()?),
                        _ => match self.value(&key)? {
                            Value::Null => Versions::Absent,
                            _ => Versions::NotObject,
                        },
                    };
                } else if USED.contains(&key.as_str()) {
                    let v = self.value(&key)?;
                    body.fields.insert(key, v);
                } else {
                    self.skip_value(&key)?;
                }
                if !self.more()? {
                    break;
                }
            }
        }
        self.end()?;
        body.values_left = self.limits.max_metadata_values.saturating_sub(self.values);
        Ok(body)
    }

    /// The members of `versions` (an object), as JSON text.
    fn raw_versions(&mut self) -> Result<Vec<RawManifest>, BodyError> {
        self.take_meta(1)?; // {
        let mut list: Vec<RawManifest> = Vec::new();
        if self.empty_object()? {
            return Ok(list);
        }
        loop {
            let version = self.key()?;
            let mut json = Vec::new();
            let values = self.capture(&mut json)?;
            json.shrink_to_fit(); // thousands of them may be kept
            serde_json::from_slice::<IgnoredAny>(&json)
                .map_err(|e| not_json(format_args!("{e} in the manifest of version {version}")))?;
            let m = RawManifest {
                version,
                json,
                values,
            };
            match list.iter_mut().find(|r| r.version == m.version) {
                Some(earlier) => *earlier = m,
                None => list.push(m),
            }
            if !self.more()? {
                return Ok(list);
            }
        }
    }

    /// Only whitespace may follow the body.
    fn end(&mut self) -> Result<(), BodyError> {
        match self.ws()? {
            None => Ok(()),
            Some(b) => Err(not_json(format_args!(
                "trailing characters after the body at byte {} ({:?})",
                self.pos,
                char::from(b)
            ))),
        }
    }

    fn attachments(&mut self) -> Result<Vec<Attachment>, BodyError> {
        self.take_meta(1)?; // {
        let mut list: Vec<Attachment> = Vec::new();
        if self.empty_object()? {
            return Ok(list);
        }
        loop {
            let file = self.key()?;
            if list.iter().any(|a| a.file == file) {
                return Err(invalid(format!(
                    "the publish body carries attachment {file:?} twice"
                )));
            }
            let first = list.is_empty();
            let a = if self.ws()? == Some(b'{') {
                self.attachment(file, first)?
            } else {
                self.skip_value(&file)?;
                Attachment {
                    file,
                    fields: None,
                    data: Data::Absent,
                }
            };
            list.push(a);
            if !self.more()? {
                return Ok(list);
            }
        }
    }

    /// An attachment object; its `data` is decoded into the sink if
    /// `stream`, else read past.
    fn attachment(&mut self, file: String, stream: bool) -> Result<Attachment, BodyError> {
        self.take_meta(1)?; // {
        let mut fields = Map::new();
        let mut data = None;
        if !self.empty_object()? {
            loop {
                let key = self.key()?;
                if key == "data" {
                    if data.is_some() {
                        return Err(invalid(format!(
                            "attachment {file:?} has more than one \"data\" member"
                        )));
                    }
                    data = Some(match self.ws()? {
                        Some(b'"') if stream => self.stream_data(&file)?,
                        Some(b'"') => {
                            self.skip_data()?;
                            Data::Skipped
                        }
                        _ => {
                            self.skip_value(&key)?;
                            Data::Absent
                        }
                    });
                } else if key == "length" {
                    let v = self.value(&key)?;
                    fields.insert(key, v);
                } else {
                    self.skip_value(&key)?;
                }
                if !self.more()? {
                    break;
                }
            }
        }
        Ok(Attachment {
            file,
            fields: Some(fields),
            data: data.unwrap_or(Data::Absent),
        })
    }

    /// Reads the characters of a string (from its opening quote up to and
    /// including the closing one), resolving escapes, and passes them to
    /// `each` in runs. Not metadata: nothing is kept here.
    fn string_chars(
        &mut self,
        mut each: impl FnMut(&[u8]) -> Result<(), BodyError>,
    ) -> Result<(), BodyError> {
        self.take_meta(1)?; // the opening quote
        loop {
            let buf = self.fill()?;
            if buf.is_empty() {
                return Err(self.eof());
            }
            let stop = buf.iter().position(|b| *b == b'"' || *b == b'\\' || *b < 0x20);
            let run = stop.unwrap_or(buf.len());
            if run > 0 {
                each(&buf[..run])?;
                self.take_data(run);
            }
            if stop.is_none() {
                continue;
            }
            let b = self.peek()?.ok_or_else(|| self.eof())?;
            self.take_data(1);
            match b {
                b'"' => return Ok(()),
                b'\\' => each(&[self.escape()?])?,
                _ => {
                    return Err(not_json(format_args!(
                        "a control character in a string at byte {}",
                        self.pos - 1
                    )));
                }
            }
        }
    }

    /// The byte an escape (after its `\`) stands for; anything beyond
    /// ASCII becomes 0xFF, which is not base64 either.
    fn escape(&mut self) -> Result<u8, BodyError> {
        let b = self.peek()?.ok_or_else(|| self.eof())?;
        self.take_data(1);
        Ok(match b {
            b'"' | b'\\' | b'/' => b,
            b'b' => 0x08,
            b'f' => 0x0c,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'u' => {
                let mut code = 0u32;
                for _ in 0..4 {
                    let h = self.peek()?.ok_or_else(|| self.eof())?;
                    let d = char::from(h).to_digit(16).ok_or_else(|| {
                        not_json(format_args!("an invalid \\u escape at byte {}", self.pos))
                    })?;
                    self.take_data(1);
                    code = code * 16 + d;
                }
                u8::try_from(code).ok().filter(u8::is_ascii).unwrap_or(0xff)
            }
            _ => {
                return Err(not_json(format_args!(
                    "an invalid escape at byte {}",
                    self.pos - 1
                )));
            }
        })
    }

    fn skip_data(&mut self) -> Result<(), BodyError> {
        self.string_chars(|_| Ok(()))
    }

    fn stream_data(&mut self, file: &str) -> Result<Data, BodyError> {
        let mut d = Decoder {
            chars: Vec::with_capacity(SEGMENT + 4),
            out: vec![0; SEGMENT / 4 * 3 + 3],
            decoded_chars: 0,
            padding: 0,
            failed: None,
            sha1: Sha1::new(),
            sha512: Sha512::new(),
            size: 0,
            max_size: self.limits.max_tarball_bytes,
        };
        // The sink is lent to the decoder while the string is read.
        let sink = self
            .sink
            .take()
            .ok_or_else(|| BodyError::Io(io::Error::other("the tarball sink is in use")))?;
        let read = self
            .string_chars(|chars| d.push(chars, &mut *sink))
            .and_then(|()| d.finish(&mut *sink));
        self.sink = Some(sink);
        read?;
        Ok(match d.failed {
            Some(e) => Data::Invalid(format!("attachment {file:?}: \"data\" is not valid base64: {e}")),
            None => Data::Streamed(TarballDigests {
                size: d.size,
                sha1: d.sha1.finalize().into(),
                sha512: d.sha512.finalize().into(),
            }),
        })
    }
}

/// Where decoded tarball bytes go.
type Sink<'s> = &'s mut dyn FnMut(&[u8]) -> io::Result<()>;

/// Base64 decoding of one `data` string, a segment at a time.
struct Decoder {
    /// Characters not decoded yet (fewer than [`SEGMENT`] + 4).
    chars: Vec<u8>,
    out: Vec<u8>,
    /// Characters decoded before `chars`, for error offsets.
    decoded_chars: usize,
    /// `=` seen; nothing else may follow them.
    padding: usize,
    failed: Option<DecodeError>,
    sha1: Sha1,
    sha512: Sha512,
    size: u64,
    max_size: u64,
}

impl Decoder {
    fn push(&mut self, mut chars: &[u8], sink: Sink<'_>) -> Result<(), BodyError> {
        while !chars.is_empty() {
            if self.failed.is_some() {
                return Ok(());
            }
            let at = self.decoded_chars + self.chars.len();
            if self.padding > 0 {
                // Only padding may follow padding, and at most two.
                if chars[0] != b'=' || self.padding == 2 {
                    self.failed = Some(DecodeError::InvalidByte(at - self.padding, b'='));
                    return Ok(());
                }
                self.padding += 1;
                self.chars.push(b'=');
                chars = &chars[1..];
                continue;
            }
            let room = SEGMENT - self.chars.len().min(SEGMENT);
            let run = chars[..room.min(chars.len())]
                .iter()
                .position(|c| *c == b'=')
                .unwrap_or(room.min(chars.len()));
            self.chars.extend_from_slice(&chars[..run]);
            chars = &chars[run..];
            if chars.first() == Some(&b'=') && self.chars.len() < SEGMENT {
                self.padding = 1;
                self.chars.push(b'=');
                chars = &chars[1..];
            }
            if self.chars.len() >= SEGMENT && self.padding == 0 {
                let whole = self.chars.len() / 4 * 4;
                self.decode(whole, sink)?;
            }
        }
        Ok(())
    }

    /// Decodes the first `n` characters into the sink.
    fn decode(&mut self, n: usize, sink: Sink<'_>) -> Result<(), BodyError> {
        let decoded = match BASE64.decode_slice(&self.chars[..n], &mut self.out) {
            Ok(k) => k,
            Err(base64::DecodeSliceError::DecodeError(e)) => {
                self.failed = Some(shift(e, self.decoded_chars));
                return Ok(());
            }
            Err(base64::DecodeSliceError::OutputSliceTooSmall) => {
                return Err(BodyError::Io(io::Error::other("base64 output buffer too small")));
            }
        };
        self.decoded_chars += n;
        self.chars.drain(..n);
        self.size += decoded as u64;
        if self.size > self.max_size {
            return Err(BodyError::Format(FormatError::too_large(format!(
                "the tarball is larger than the limit of {} bytes",
                self.max_size
            ))));
        }
        let bytes = &self.out[..decoded];
        self.sha1.update(bytes);
        self.sha512.update(bytes);
        sink(bytes).map_err(BodyError::Io)
    }

    fn finish(&mut self, sink: Sink<'_>) -> Result<(), BodyError> {
        if self.failed.is_some() || self.chars.is_empty() {
            return Ok(());
        }
        self.decode(self.chars.len(), sink)
    }
}

/// `e` with its offset moved by `by` characters decoded before.
fn shift(e: DecodeError, by: usize) -> DecodeError {
    match e {
        DecodeError::InvalidByte(at, b) => DecodeError::InvalidByte(at + by, b),
        DecodeError::InvalidLength(n) => DecodeError::InvalidLength(n + by),
        DecodeError::InvalidLastSymbol(at, b) => DecodeError::InvalidLastSymbol(at + by, b),
        DecodeError::InvalidPadding => DecodeError::InvalidPadding,
    }
}

#[cfg(test)]
mod tests {
    use base64::engine::general_purpose::STANDARD;
    use serde_json::json;

    use super::*;

    const LIMITS: BodyLimits = BodyLimits {
        max_metadata_bytes: 1 << 20,
        max_metadata_values: 1 << 20,
        max_tarball_bytes: 1 << 30,
    };

    /// Reads `body` through a reader that hands out `step` bytes at a time.
    fn read(body: &[u8], step: usize, limits: &BodyLimits) -> (Result<PutBody, BodyError>, Vec<u8>) {
        struct Trickle<'a>(&'a [u8], usize);
        impl io::Read for Trickle<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let n = self.1.min(buf.len()).min(self.0.len());
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let mut got = Vec::new();
        let r = read_put_body(
            io::BufReader::with_capacity(step, Trickle(body, step)),
            limits,
            &mut |c: &[u8]| {
                got.extend_from_slice(c);
                Ok(())
            },
        );
        (r, got)
    }

    fn digests(data: &[u8]) -> TarballDigests {
        TarballDigests {
            size: data.len() as u64,
            sha1: Sha1::digest(data).into(),
            sha512: Sha512::digest(data).into(),
        }
    }

    #[track_caller]
    fn format_error(r: Result<PutBody, BodyError>) -> FormatError {
        match r {
            Err(BodyError::Format(e)) => e,
            other => panic!("expected a format error, got {other:?}"),
        }
    }

    #[test]
    fn streams_the_first_attachment_in_any_member_order() {
        let tarball: Vec<u8> = (0..700_000u32).map(|i| (i * 7 + i / 3) as u8).collect();
        let data = STANDARD.encode(&tarball);
        for step in [1, 7, 4096, 1 << 20] {
            let body = format!(
                r#" {{ "_attachments" : {{ "p-1.0.0.tgz" : {{ "content_type":"x", "data" : "{data}", "length": {} }} , "other.sigstore": {{"data": "e30="}} }}, "name":"p", "versions": {{"1.0.0": {{"a": ["}}", "\"{{"]}}}}, "readme": -1.5e3, "time": {{"x": [true, null]}} }} "#,
                tarball.len()
            );
            let (r, got) = read(body.as_bytes(), step, &LIMITS);
            let b = r.unwrap_or_else(|e| panic!("step {step}: {e:?}"));
            assert_eq!(got, tarball, "step {step}");
            assert!(b.is_publish());
            assert_eq!(b.fields["name"], "p");
            let Versions::Raw(versions) = &b.versions else {
                panic!("{:?}", b.versions)
            };
            assert_eq!(versions.len(), 1);
            assert_eq!(versions[0].version, "1.0.0");
            let manifest: Value = serde_json::from_slice(&versions[0].json).unwrap();
            assert_eq!(manifest, json!({"a": ["}", "\"{"]}));
            assert_eq!(versions[0].values, 4);
            assert_eq!(b.fields["readme"], json!(-1500.0));
            assert!(
                !b.fields.contains_key("time"),
                "members no check uses are dropped"
            );
            let list = b.attachments.as_ref().unwrap();
            assert_eq!(list.len(), 2);
            assert_eq!(list[0].file, "p-1.0.0.tgz");
            assert!(matches!(&list[0].data, Data::Streamed(d) if *d == digests(&tarball)));
            assert_eq!(list[0].fields.as_ref().unwrap()["length"], tarball.len());
            assert!(!list[0].fields.as_ref().unwrap().contains_key("content_type"));
            assert!(matches!(list[1].data, Data::Skipped));
        }
    }

    #[test]
    fn base64_forms() {
        let one = |data: &str| {
            let body = format!(r#"{{"_attachments":{{"f":{{"data":"{data}"}}}}}}"#);
            let (r, got) = read(body.as_bytes(), 3, &LIMITS);
            let b = r.unwrap();
            match &b.attachments.as_ref().unwrap()[0].data {
                Data::Streamed(d) => {
                    assert_eq!(d.size, got.len() as u64);
                    Ok(got)
                }
                Data::Invalid(msg) => Err(msg.clone()),
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(one("QUJD").unwrap(), b"ABC");
        assert_eq!(one("QUI=").unwrap(), b"AB");
        assert_eq!(one("QUI").unwrap(), b"AB", "padding is optional");
        assert_eq!(one("QQ==").unwrap(), b"A");
        assert_eq!(one("QQ").unwrap(), b"A");
        assert_eq!(
            one(r"QU\/D\u0041A==").unwrap(),
            STANDARD.decode("QU/DAA==").unwrap()
        );
        assert_eq!(one("").unwrap(), b"");
        for bad in [
            "QQ==QUJD",
            "QQ===",
            "Q",
            "!!!not base64",
            "QUJD\\n",
            "QUJD\\u00e9",
            "QR==",
        ] {
            let msg = one(bad).unwrap_err();
            assert!(msg.contains("not valid base64"), "{bad}: {msg}");
            assert!(msg.contains("\"f\""), "{bad}: {msg}");
        }
        // Offsets count from the start of the string, across segments.
        let long = format!("{}!", "A".repeat(SEGMENT + 8));
        assert!(
            one(&long)
                .unwrap_err()
                .contains(&format!("offset {}", SEGMENT + 8))
        );
    }

    #[test]
    fn limits_hold_while_reading() {
        let limits = BodyLimits {
            max_metadata_bytes: 100,
            max_metadata_values: 1000,
            max_tarball_bytes: 1000,
        };
        let data = STANDARD.encode(vec![1u8; 10_000]);
        // The data string does not count as metadata...
        let body = format!(
            r#"{{"name":"p","_attachments":{{"f":{{"data":"{}"}}}}}}"#,
            &data[..1000]
        );
        assert!(read(body.as_bytes(), 64, &limits).0.is_ok());
        // ...but the decoded tarball has its own limit,
        let body = format!(r#"{{"name":"p","_attachments":{{"f":{{"data":"{data}"}}}}}}"#);
        let e = format_error(read(body.as_bytes(), 64, &limits).0);
        assert!(
            matches!(&e, FormatError::TooLarge(m) if m.contains("limit of 1000")),
            "{e:?}"
        );
        // and everything else is metadata.
        let body = format!(r#"{{"readme":"{}"}}"#, "r".repeat(200));
        let e = format_error(read(body.as_bytes(), 64, &limits).0);
        assert!(
            matches!(&e, FormatError::TooLarge(m) if m.contains("100 bytes of JSON")),
            "{e:?}"
        );
        let body = format!(
            r#"{{"_attachments":{{"f":{{"data":"", "x":"{}"}}}}}}"#,
            "r".repeat(200)
        );
        assert!(matches!(
            format_error(read(body.as_bytes(), 64, &limits).0),
            FormatError::TooLarge(_)
        ));
        // Skipped attachments are not kept either.
        let body = format!(r#"{{"_attachments":{{"f":{{"data":""}},"g":{{"data":"{data}"}}}}}}"#);
        assert!(read(body.as_bytes(), 64, &limits).0.is_ok());

        // Values kept in memory are counted; members nothing uses are not,
        // nor manifests yet (an update reads little of them).
        let limits = BodyLimits {
            max_metadata_bytes: 1 << 20,
            max_metadata_values: 1000,
            max_tarball_bytes: 0,
        };
        let zeros = |n: usize| format!("[{}]", vec!["0"; n].join(","));
        let body = format!(r#"{{"readme":{}}}"#, zeros(999));
        let b = read(body.as_bytes(), 64, &limits).0.unwrap();
        assert_eq!(b.values_left, 0, "an array and 999 numbers");
        let body = format!(r#"{{"readme":{}}}"#, zeros(1000));
        let e = format_error(read(body.as_bytes(), 64, &limits).0);
        assert!(
            matches!(&e, FormatError::TooLarge(m) if m.contains("1000 JSON values")),
            "{e:?}"
        );
        let body = format!(
            r#"{{"time":{},"name":"p","versions":{{"1.0.0":{}}}}}"#,
            zeros(5000),
            zeros(5000)
        );
        let b = read(body.as_bytes(), 64, &limits).0.unwrap();
        assert_eq!(b.values_left, 999);
        assert!(matches!(&b.versions, Versions::Raw(v) if v[0].values == 5001));
    }

    #[test]
    fn malformed_bodies() {
        for (body, needle) in [
            ("", "not valid JSON"),
            ("   ", "not valid JSON"),
            ("[1]", "not a JSON object"),
            ("\"x\"", "not a JSON object"),
            ("nul", "not valid JSON"),
            ("{\"name\": \"p\", ", "not valid JSON"),
            ("{\"name\": \"p\",}", "not valid JSON"),
            ("{\"name\" \"p\"}", "not valid JSON"),
            ("{\"name\": \"p\"} x", "trailing"),
            ("{\"name\": [1,}", "not valid JSON"),
            ("{\"name\": [1}", "not valid JSON"),
            ("{\"name\": tru}", "not valid JSON"),
            ("{name: 1}", "not valid JSON"),
            ("{\"a\": \"\u{1}\"}", "not valid JSON"),
            (
                "{\"_attachments\":{\"f\":{\"data\":\"QQ\u{1}\"}}}",
                "control character",
            ),
            (
                "{\"_attachments\":{\"f\":{\"data\":\"QQ\\x\"}}}",
                "invalid escape",
            ),
            ("{\"_attachments\":{\"f\":{\"data\":\"QQ", "ends early"),
            (
                "{\"_attachments\":{}, \"_attachments\":{}}",
                "more than one \"_attachments\"",
            ),
            ("{\"_attachments\":{\"f\":{}, \"f\":{}}}", "twice"),
            (
                "{\"_attachments\":{\"f\":{\"data\":\"\", \"data\":\"\"}}}",
                "more than one \"data\"",
            ),
            ("{\"_attachments\":{\"f\":{\"data\":1} x}}", "not valid JSON"),
        ] {
            for step in [1, 4096] {
                let e = format_error(read(body.as_bytes(), step, &LIMITS).0);
                assert!(e.to_string().contains(needle), "{body:?}: {e}");
            }
        }
    }

    #[test]
    fn what_is_a_publish() {
        let is_publish = |body: &str| read(body.as_bytes(), 16, &LIMITS).0.unwrap().is_publish();
        assert!(!is_publish("{}"));
        assert!(!is_publish(r#"{"_attachments": null}"#));
        assert!(!is_publish(r#"{"_attachments": {}}"#));
        assert!(is_publish(r#"{"_attachments": 1}"#));
        assert!(is_publish(r#"{"_attachments": {"f": 1}}"#));
        assert!(is_publish(r#"{"_attachments": {"f": {}}}"#));
    }

    proptest::proptest! {
        /// However the body arrives, in chunks of any size, it reads the same.
        #[test]
        fn chunking_does_not_matter(step in 1usize..64, len in 0usize..3000) {
            let tarball: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let body = format!(
                r#"{{"name":"p","_attachments":{{"p.tgz":{{"length":{len},"data":"{}"}}}},"versions":{{"1.0.0":{{"x":"\u00e9\"}}"}}}},"readme":"r"}}"#,
                STANDARD.encode(&tarball)
            );
            let (r, got) = read(body.as_bytes(), step, &LIMITS);
            let b = r.unwrap();
            proptest::prop_assert_eq!(&got, &tarball);
            let whole = read(body.as_bytes(), 1 << 16, &LIMITS).0.unwrap();
            proptest::prop_assert_eq!(format!("{b:?}"), format!("{whole:?}"));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512), step in 1usize..16) {
            let _ = read(&bytes, step, &LIMITS);
        }
    }

    #[test]
    fn io_errors_are_not_format_errors() {
        let body = br#"{"_attachments":{"f":{"data":"QUJD"}}}"#;
        let r = read_put_body(&body[..], &LIMITS, &mut |_| Err(io::Error::other("disk full")));
        assert!(matches!(r, Err(BodyError::Io(e)) if e.to_string() == "disk full"));
        struct Broken;
        impl io::Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::other("gone"))
            }
        }
        let r = read_put_body(io::BufReader::new(Broken), &LIMITS, &mut |_| Ok(()));
        assert!(matches!(r, Err(BodyError::Io(_))));
    }
}
