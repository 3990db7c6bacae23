//! Why the server closes a client connection: the reasons its debug log
//! line gives.

/// Why a client connection closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Close {
    #[error("shutting down")]
    ShuttingDown,
    #[error("closed by client")]
    ClosedByClient,
    #[error("read error")]
    ReadError,
    #[error("write error")]
    WriteError,
    /// No request within the idle timeout.
    #[error("idle")]
    Idle,
    #[error("request head not received in time")]
    HeadTimeout,
    #[error("closed during a request head")]
    ClosedDuringHead,
    #[error("malformed request head")]
    MalformedHead,
    #[error("malformed request body")]
    MalformedBody,
    /// A body the handler did not read was too large or slow to drain.
    #[error("request body not read")]
    BodyNotRead,
    /// The request body's read side did not come back from the handler.
    #[error("request body not recovered")]
    BodyNotRecovered,
    /// The client took none of a response for the idle timeout.
    #[error("client stopped reading")]
    ClientStoppedReading,
    #[error("response body failed")]
    ResponseBodyFailed,
    #[error("response body longer than declared")]
    ResponseTooLong,
    #[error("response body shorter than declared")]
    ResponseTooShort,
    /// Handed over to an upgraded protocol.
    #[error("upgraded")]
    Upgraded,
    /// The request or the response asked for the connection to close.
    #[error("not keep-alive")]
    NotKeepAlive,
}
