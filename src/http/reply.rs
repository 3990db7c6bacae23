//! What a handler answers: a response, with an upstream's fields kept as
//! they arrived until someone reads or changes them, and the request id to
//! return.

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Extensions, Response, StatusCode};

use crate::ctx::{RequestId, X_REQUEST_ID};
use crate::http::body::Body;
use crate::http::h1::RawFields;

/// A response on its way to the client.
///
/// An upstream's end-to-end fields stay as they arrived (see
/// [`RawFields`]) while nobody looks at them, and the HTTP/1 writer copies
/// them out as they are: building a header map for them costs more than the
/// rest of the exchange's head handling. They are still part of the
/// response's fields for everyone: [`headers`](Self::headers) and
/// [`headers_mut`](Self::headers_mut) fold them into the header map first,
/// so what is read or overridden there is what the client gets, and the
/// writer then sends the map, each name in the case it arrived in.
pub struct Reply {
    response: Response<Body>,
    received: Received,
    /// `X-Request-Id`, written after the other fields (it replaces any the
    /// header map holds).
    pub request_id: Option<RequestId>,
}

/// Where an upstream's fields are.
#[derive(Debug)]
pub(crate) enum Received {
    /// None: every field is in the header map.
    None,
    /// As they arrived, not in the header map, which holds only fields
    /// added after them.
    Untouched(Box<RawFields>),
    /// Folded into the header map; kept for the case their names arrived in.
    Folded(Box<RawFields>),
}

impl Received {
    /// Fields to write before the header map's.
    pub(crate) fn untouched(&self) -> Option<&RawFields> {
        match self {
            Received::Untouched(raw) => Some(raw),
            _ => None,
        }
    }

    /// Fields whose names' case the header map's fields are written in.
    pub(crate) fn folded(&self) -> Option<&RawFields> {
        match self {
            Received::Folded(raw) => Some(raw),
            _ => None,
        }
    }

    /// Gives the fields' box back for reuse, once written.
    pub(crate) fn recycle(self) {
        match self {
            Received::Untouched(raw) | Received::Folded(raw) => raw.recycle(),
            Received::None => {}
        }
    }
}

impl Reply {
    /// A response whose fields are all in its header map.
    pub fn new(response: Response<Body>) -> Reply {
        Reply {
            response,
            received: Received::None,
            request_id: None,
        }
    }

    /// An upstream's response, its end-to-end fields as they arrived in
    /// `received` and what the gateway adds in the response's header map.
    pub(crate) fn with_received(response: Response<Body>, received: Box<RawFields>) -> Reply {
        Reply {
            response,
            received: Received::Untouched(received),
            request_id: None,
        }
    }

    pub fn status(&self) -> StatusCode {
        self.response.status()
    }

    /// Every field of the response.
    pub fn headers(&mut self) -> &HeaderMap {
        self.headers_mut()
    }

    /// Every field of the response, to change.
    pub fn headers_mut(&mut self) -> &mut HeaderMap {
        if let Received::Untouched(_) = self.received {
            let Received::Untouched(raw) = std::mem::replace(&mut self.received, Received::None)
            else {
                unreachable!()
            };
            let added = std::mem::take(self.response.headers_mut());
            *self.response.headers_mut() = raw.fold(added);
            self.received = Received::Folded(raw);
        }
        self.response.headers_mut()
    }

    /// Adds a field after all the others, leaving an upstream's as they
    /// arrived (to add needs no look at them).
    pub fn append_header(&mut self, name: HeaderName, value: HeaderValue) {
        self.response.headers_mut().append(name, value);
    }

    pub fn extensions(&self) -> &Extensions {
        self.response.extensions()
    }

    pub fn extensions_mut(&mut self) -> &mut Extensions {
        self.response.extensions_mut()
    }

    /// The response with every field in its header map (for HTTP/2, and
    /// anything else that reads them).
    pub fn into_response(mut self) -> Response<Body> {
        self.headers_mut();
        let mut response = self.response;
        self.received.recycle();
        if let Some(id) = self.request_id {
            response
                .headers_mut()
                .insert(X_REQUEST_ID, id.to_header_value());
        }
        response
    }

    /// The parts for the HTTP/1 writer: the response's, its body, an
    /// upstream's fields and the request id.
    pub(crate) fn into_parts(self) -> (http::response::Parts, Body, Received, Option<RequestId>) {
        let (parts, body) = self.response.into_parts();
        (parts, body, self.received, self.request_id)
    }
}

impl From<Response<Body>> for Reply {
    fn from(response: Response<Body>) -> Reply {
        Reply::new(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::h1::encode::{self, Exchange, Fields};
    use bytes::Bytes;
    use http::Version;

    const HEAD: &[u8] =
        b"HTTP/1.1 200 OK\r\nX-Upstream-Thing: up\r\nCache-Control: no-store\r\n\r\n";

    /// An upstream's reply whose fields are as received.
    fn upstream() -> Reply {
        let mut raw = RawFields::new(Bytes::from_static(HEAD), None);
        raw.push((17, 16), (35, 2));
        raw.push((39, 13), (54, 8));
        let mut res = Response::new(crate::http::body::empty());
        res.headers_mut()
            .append("set-cookie", HeaderValue::from_static("a=1"));
        Reply::with_received(res, raw)
    }

    /// The reply as the HTTP/1 writer sends its head.
    fn written(reply: Reply) -> String {
        let (parts, body, received, _) = reply.into_parts();
        let mut out = Vec::new();
        encode::head(
            parts.status,
            Fields {
                received: received.untouched(),
                cased: received.folded(),
                map: &parts.headers,
                request_id: None,
            },
            &http_body::Body::size_hint(&body),
            Exchange {
                version: Version::HTTP_11,
                head_request: false,
            },
            &mut true,
            &mut out,
        );
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn untouched_fields_are_written_as_received() {
        let text = written(upstream());
        assert!(text.contains("\r\nX-Upstream-Thing: up\r\n"), "{text}");
        assert!(text.contains("\r\nCache-Control: no-store\r\n"), "{text}");
        assert!(text.contains("\r\nset-cookie: a=1\r\n"), "{text}");
    }

    #[test]
    fn upstream_fields_are_visible_through_the_map() {
        let mut reply = upstream();
        assert_eq!(reply.headers()["x-upstream-thing"], "up");
        assert_eq!(reply.headers()["cache-control"], "no-store");
        assert_eq!(reply.headers()["set-cookie"], "a=1");
        let text = written(reply);
        assert_eq!(
            text.matches("X-Upstream-Thing: up\r\n").count(),
            1,
            "{text}"
        );
        assert_eq!(
            text.matches("Cache-Control: no-store\r\n").count(),
            1,
            "{text}"
        );
        assert!(!text
            .to_ascii_lowercase()
            .contains("\r\nx-upstream-thing: up\r\nx-upstream"));
    }

    #[test]
    fn upstream_fields_are_overridden_through_the_map() {
        let mut reply = upstream();
        reply
            .headers_mut()
            .insert("cache-control", HeaderValue::from_static("private"));
        reply.headers_mut().remove("x-upstream-thing");
        let text = written(reply);
        assert_eq!(text.matches("Cache-Control: ").count(), 1, "{text}");
        assert!(text.contains("\r\nCache-Control: private\r\n"), "{text}");
        assert!(
            !text.to_ascii_lowercase().contains("x-upstream-thing"),
            "{text}"
        );
        let mut reply = upstream();
        reply
            .headers_mut()
            .insert("x-upstream-thing", HeaderValue::from_static("gateway"));
        let response = reply.into_response();
        let things: Vec<_> = response
            .headers()
            .get_all("x-upstream-thing")
            .iter()
            .collect();
        assert_eq!(things, ["gateway"]);
    }
}
