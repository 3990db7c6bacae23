//! What a handler answers: a response, with an upstream's fields kept as
//! they arrived and the request id to return.

use http::Response;

use crate::ctx::{RequestId, X_REQUEST_ID};
use crate::http::body::Body;
use crate::http::h1::RawFields;

/// A response on its way to the client. An upstream's end-to-end fields
/// stay as they arrived in `received` (see [`RawFields`]) and are sent before
/// the response's own header map, which holds what the gateway adds.
pub struct Reply {
    pub response: Response<Body>,
    pub(crate) received: Option<Box<RawFields>>,
    /// `X-Request-Id`, written after the other fields (it replaces any the
    /// header map holds).
    pub request_id: Option<RequestId>,
}

impl Reply {
    /// A response whose fields are all in its header map.
    pub fn new(response: Response<Body>) -> Reply {
        Reply {
            response,
            received: None,
            request_id: None,
        }
    }

    /// The response with every field in its header map (for HTTP/2, and
    /// anything else that reads them).
    pub fn into_response(self) -> Response<Body> {
        let mut response = self.response;
        if let Some(received) = self.received {
            let rest = std::mem::take(response.headers_mut());
            *response.headers_mut() = received.into_map(rest);
        }
        if let Some(id) = self.request_id {
            response
                .headers_mut()
                .insert(X_REQUEST_ID, id.to_header_value());
        }
        response
    }
}

impl From<Response<Body>> for Reply {
    fn from(response: Response<Body>) -> Reply {
        Reply::new(response)
    }
}
