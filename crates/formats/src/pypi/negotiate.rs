//! Content negotiation for the simple API (PEP 691).

/// Which serialization of the simple API to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IndexFormat {
    /// PEP 503 HTML.
    Html,
    /// PEP 691 JSON.
    Json,
}

/// `Content-Type` of HTML pages requested as `text/html` (or by default).
pub const HTML_CONTENT_TYPE: &str = "text/html; charset=utf-8";
/// `Content-Type` of HTML pages requested as the versioned PEP 691 type.
pub const HTML_V1_CONTENT_TYPE: &str = "application/vnd.pypi.simple.v1+html";
/// `Content-Type` of JSON pages.
pub const JSON_CONTENT_TYPE: &str = "application/vnd.pypi.simple.v1+json";

/// The outcome of negotiation: what to render and the `Content-Type` to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    pub format: IndexFormat,
    pub content_type: &'static str,
}

const HTML: Negotiated = Negotiated {
    format: IndexFormat::Html,
    content_type: HTML_CONTENT_TYPE,
};
const HTML_V1: Negotiated = Negotiated {
    format: IndexFormat::Html,
    content_type: HTML_V1_CONTENT_TYPE,
};
const JSON: Negotiated = Negotiated {
    format: IndexFormat::Json,
    content_type: JSON_CONTENT_TYPE,
};

/// Chooses HTML or JSON from an `Accept` header value.
///
/// Understands `application/vnd.pypi.simple.v1+json` and `.latest+json`,
/// `application/vnd.pypi.simple.v1+html` and `.latest+html`, `text/html`,
/// `text/*` and `*/*`, with q-values (`q=0` means "not acceptable"). The
/// highest q wins; on a tie a specific type beats a wildcard and JSON beats
/// HTML. No header, or nothing acceptable, gives HTML (`text/html`).
/// Responses should carry `Vary: Accept`.
pub fn negotiate(accept: Option<&str>) -> Negotiated {
    let mut best: Option<(u16, u8, Negotiated)> = None;
    for range in accept.unwrap_or("").split(',') {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let (rank, choice) = match media.as_str() {
            "application/vnd.pypi.simple.v1+json" | "application/vnd.pypi.simple.latest+json" => (3, JSON),
            "application/vnd.pypi.simple.v1+html" | "application/vnd.pypi.simple.latest+html" => (2, HTML_V1),
            "text/html" => (1, HTML),
            "text/*" | "*/*" => (0, HTML),
            _ => continue,
        };
        let mut q = Some(1000);
        for param in parts {
            if let Some((k, v)) = param.split_once('=')
                && k.trim().eq_ignore_ascii_case("q")
            {
                q = parse_q(v.trim());
            }
        }
        let Some(q) = q.filter(|q| *q > 0) else { continue };
        if best.is_none_or(|(bq, brank, _)| (q, rank) > (bq, brank)) {
            best = Some((q, rank, choice));
        }
    }
    best.map_or(HTML, |(_, _, n)| n)
}

/// A q-value in thousandths; `None` when malformed.
fn parse_q(v: &str) -> Option<u16> {
    let q: f32 = v.parse().ok()?;
    (0.0..=1.0).contains(&q).then(|| (q * 1000.0).round() as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pick(accept: &str) -> Negotiated {
        negotiate(Some(accept))
    }

    #[test]
    fn negotiates() {
        assert_eq!(negotiate(None), HTML);
        assert_eq!(pick(""), HTML);
        assert_eq!(pick("*/*"), HTML);
        assert_eq!(pick("text/html"), HTML);
        assert_eq!(pick("application/json"), HTML);
        assert_eq!(pick("application/vnd.pypi.simple.v1+json"), JSON);
        assert_eq!(pick("application/vnd.pypi.simple.latest+json"), JSON);
        assert_eq!(pick("application/vnd.pypi.simple.v1+html"), HTML_V1);
        // pip and uv
        assert_eq!(
            pick(
                "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; q=0.1, text/html; q=0.01"
            ),
            JSON
        );
        // q-values beat order and specificity
        assert_eq!(pick("application/vnd.pypi.simple.v1+json;q=0.5, text/html"), HTML);
        assert_eq!(
            pick("text/html;q=0.2, application/vnd.pypi.simple.v1+json;q=0.9"),
            JSON
        );
        assert_eq!(pick("*/*;q=0.9, application/vnd.pypi.simple.v1+html;q=0.8"), HTML);
        assert_eq!(
            pick("TEXT/HTML;Q=0.5, Application/Vnd.Pypi.Simple.V1+Json;q=0.6"),
            JSON
        );
        // q=0 refuses, malformed q ignores the range
        assert_eq!(pick("application/vnd.pypi.simple.v1+json;q=0, */*"), HTML);
        assert_eq!(pick("application/vnd.pypi.simple.v1+json;q=2"), HTML);
        assert_eq!(
            pick("application/vnd.pypi.simple.v1+json;q=abc, text/html;q=0.1"),
            HTML
        );
        // ties: specific beats wildcard, JSON beats HTML
        assert_eq!(pick("*/*, application/vnd.pypi.simple.v1+json"), JSON);
        assert_eq!(pick("text/html, application/vnd.pypi.simple.v1+json"), JSON);
        assert_eq!(JSON.content_type, "application/vnd.pypi.simple.v1+json");
    }
}
