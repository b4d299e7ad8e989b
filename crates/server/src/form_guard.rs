//! Bounds on the parts of a `multipart/form-data` body (RFC 7578) that its
//! parser holds in memory: the bytes before the first boundary and each
//! part's header block. The parser (multer, behind axum's `Multipart`)
//! buffers both until they end, with no ceiling of its own, so one part
//! header of 300 MB held some 1.2 GB of memory. [`FormGuard`] wraps the
//! request body of every request whose `Content-Type` is
//! `multipart/form-data` (the edge layer puts it in place): it passes the
//! bytes through unchanged while it follows the delimiters, and fails the
//! body once either holds more than [`MAX_FORM_HEAD`] bytes. Part contents
//! are not bounded here (each route streams them, under its own limits).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use memchr::memmem::Finder;

/// Most bytes before the first boundary, and in one part's header block
/// (from its boundary line to the blank line that ends its headers).
pub(crate) const MAX_FORM_HEAD: usize = 64 << 10;

/// Why a multipart body was cut off (the route answers 400 with it).
#[derive(Debug, thiserror::Error)]
pub(crate) enum FormError {
    #[error("the multipart body has more than {MAX_FORM_HEAD} bytes before its first boundary")]
    Preamble,
    #[error(
        "a multipart part's headers run past {MAX_FORM_HEAD} bytes without the blank line that ends them"
    )]
    PartHead,
}

/// Where in the body the scan is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    /// Before the first delimiter (`--boundary`).
    Preamble,
    /// After a delimiter: its rest of line and the part's headers, up to
    /// `CRLF CRLF`. `start` holds the first two bytes ("--" ends the body).
    Head,
    /// A part's content, up to `CRLF --boundary`.
    Content,
    /// After the closing delimiter: nothing more is parsed.
    Done,
}

/// The scan of a body's delimiters, fed one chunk at a time.
struct Scan {
    place: Place,
    /// Bytes seen in the current preamble or head.
    held: usize,
    /// The first bytes after a delimiter (up to 2), to tell the closing one.
    start: Vec<u8>,
    /// The end of the previous chunk, for a pattern split between chunks
    /// (shorter than the pattern being looked for).
    carry: Vec<u8>,
    first: Finder<'static>,
    next: Finder<'static>,
    blank: Finder<'static>,
}

impl Scan {
    fn new(boundary: &str) -> Self {
        Scan {
            place: Place::Preamble,
            held: 0,
            start: Vec::with_capacity(2),
            carry: Vec::new(),
            first: Finder::new(&format!("--{boundary}")).into_owned(),
            next: Finder::new(&format!("\r\n--{boundary}")).into_owned(),
            blank: Finder::new(b"\r\n\r\n").into_owned(),
        }
    }

    /// Follows `chunk`; an error once a preamble or a head is too long.
    fn feed(&mut self, mut chunk: &[u8]) -> Result<(), FormError> {
        while !chunk.is_empty() {
            let finder = match self.place {
                Place::Done => return Ok(()),
                Place::Preamble => &self.first,
                Place::Head => &self.blank,
                Place::Content => &self.next,
            };
            if self.place == Place::Head && self.start.len() < 2 {
                let take = (2 - self.start.len()).min(chunk.len());
                self.start.extend_from_slice(&chunk[..take]);
                if self.start == b"--" {
                    self.place = Place::Done;
                    return Ok(());
                }
            }
            let found = find_across(finder, &mut self.carry, chunk);
            let used = found.unwrap_or(chunk.len());
            if matches!(self.place, Place::Preamble | Place::Head) {
                self.held = self.held.saturating_add(used);
                if self.held > MAX_FORM_HEAD + finder.needle().len() {
                    return Err(match self.place {
                        Place::Preamble => FormError::Preamble,
                        _ => FormError::PartHead,
                    });
                }
            }
            let Some(end) = found else { return Ok(()) };
            self.place = match self.place {
                Place::Head => Place::Content,
                _ => Place::Head,
            };
            self.held = 0;
            self.start.clear();
            self.carry.clear();
            chunk = &chunk[end..];
        }
        Ok(())
    }
}

/// Where in `chunk` the first match of `finder` ends, counting a match
/// that begins in `carry` (the end of the previous chunk); None if there
/// is none, and then `carry` keeps what a match split by the next chunk
/// could begin with.
fn find_across(finder: &Finder<'static>, carry: &mut Vec<u8>, chunk: &[u8]) -> Option<usize> {
    let n = finder.needle().len();
    if !carry.is_empty() {
        let mut joint = carry.clone();
        joint.extend_from_slice(&chunk[..chunk.len().min(n - 1)]);
        if let Some(at) = finder.find(&joint) {
            return Some(at + n - carry.len());
        }
    }
    if let Some(at) = finder.find(chunk) {
        return Some(at + n);
    }
    let keep = n.saturating_sub(1);
    carry.extend_from_slice(&chunk[chunk.len().saturating_sub(keep)..]);
    if carry.len() > keep {
        carry.drain(..carry.len() - keep);
    }
    None
}

/// The boundary of a `multipart/form-data` content type (RFC 7578 §4.1,
/// RFC 2046 §5.1.1: 1 to 70 characters, quoted or not); None for another
/// type or one without a usable boundary (the route refuses those).
pub(crate) fn boundary_of(content_type: &str) -> Option<String> {
    let mut parts = content_type.split(';');
    let kind = parts.next()?.trim();
    if !kind.eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    for p in parts {
        let Some((k, v)) = p.split_once('=') else { continue };
        if k.trim().eq_ignore_ascii_case("boundary") {
            let v = v.trim();
            let v = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(v);
            return (1..=70).contains(&v.len()).then(|| v.to_owned());
        }
    }
    None
}

pin_project_lite::pin_project! {
    /// A request body passed through unchanged, failed with a
    /// [`FormError`] once its preamble or a part's head is too long.
    pub(crate) struct FormGuard<B> {
        #[pin]
        inner: B,
        scan: Scan,
        failed: bool,
    }
}

impl<B> FormGuard<B> {
    pub(crate) fn new(inner: B, boundary: &str) -> Self {
        FormGuard {
            inner,
            scan: Scan::new(boundary),
            failed: false,
        }
    }
}

impl<B> Body for FormGuard<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.project();
        if *this.failed {
            return Poll::Ready(None);
        }
        match std::task::ready!(this.inner.poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref()
                    && let Err(e) = this.scan.feed(data)
                {
                    *this.failed = true;
                    return Poll::Ready(Some(Err(Box::new(e))));
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => Poll::Ready(Some(Err(e.into()))),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `body` in pieces of `piece` bytes; the first error, if any.
    fn scan(body: &[u8], piece: usize) -> Result<(), FormError> {
        let mut s = Scan::new("XB");
        for c in body.chunks(piece) {
            s.feed(c)?;
        }
        Ok(())
    }

    fn form(name_len: usize, content: &[u8]) -> Vec<u8> {
        let mut b = b"--XB\r\nContent-Disposition: form-data; name=\"".to_vec();
        b.extend(std::iter::repeat_n(b'N', name_len));
        b.extend_from_slice(b"\"; filename=\"a.deb\"\r\n\r\n");
        b.extend_from_slice(content);
        b.extend_from_slice(b"\r\n--XB\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\nv\r\n--XB--\r\n");
        b
    }

    #[test]
    fn ordinary_forms_pass_in_any_split() {
        // Content that looks like headers, a blank line and near-boundaries.
        let content = b"\r\n\r\n--X\r\n--XA\r\n\r\n".repeat(20_000);
        let body = form(10, &content);
        for piece in [1, 2, 3, 5, 7, 64, 4096, body.len()] {
            assert!(scan(&body, piece).is_ok(), "pieces of {piece}");
        }
        // A long part content is not a long head.
        let big = vec![b'x'; 3 * MAX_FORM_HEAD];
        assert!(scan(&form(10, &big), 1000).is_ok());
        // Nothing after the closing delimiter is looked at.
        let mut tail = form(10, b"x");
        tail.extend(std::iter::repeat_n(b'y', 2 * MAX_FORM_HEAD));
        assert!(scan(&tail, 999).is_ok());
    }

    #[test]
    fn a_long_part_head_or_preamble_is_refused_in_any_split() {
        for piece in [1, 3, 4096, 1 << 20] {
            let e = scan(&form(MAX_FORM_HEAD + 10, b"x"), piece).unwrap_err();
            assert!(matches!(e, FormError::PartHead), "pieces of {piece}");
            assert!(
                scan(&form(MAX_FORM_HEAD - 200, b"x"), piece).is_ok(),
                "pieces of {piece}"
            );
            let mut pre = vec![b'p'; MAX_FORM_HEAD + 100];
            pre.extend_from_slice(&form(1, b"x"));
            assert!(matches!(scan(&pre, piece).unwrap_err(), FormError::Preamble));
        }
        // The second part's head counts on its own.
        let mut two = form(10, b"x");
        let at = two.windows(5).rposition(|w| w == b"name=").unwrap();
        two.splice(at..at, std::iter::repeat_n(b'Z', MAX_FORM_HEAD + 1));
        assert!(matches!(scan(&two, 777).unwrap_err(), FormError::PartHead));
    }

    #[test]
    fn boundaries_are_read_from_the_content_type() {
        assert_eq!(
            boundary_of("multipart/form-data; boundary=XB").as_deref(),
            Some("XB")
        );
        assert_eq!(
            boundary_of("Multipart/Form-Data;boundary=\"a b\"; charset=x").as_deref(),
            Some("a b")
        );
        assert_eq!(boundary_of("application/json"), None);
        assert_eq!(boundary_of("multipart/form-data"), None);
        assert_eq!(
            boundary_of(&format!("multipart/form-data; boundary={}", "b".repeat(71))),
            None
        );
    }
}
