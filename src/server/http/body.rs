//! A request body read under the listener's limits: at most `--max-line` bytes (413), within
//! the idle time (408), as `POST /v1/generate` reads it.

use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::{Body, Incoming};
use hyper::{Request, StatusCode};
use tokio::time::timeout;

use super::Limits;
use crate::protocol::ErrorCode;

/// Why a body could not be read: its status, code and message.
#[derive(Debug)]
pub(super) struct Unread {
    pub(super) status: StatusCode,
    pub(super) code: ErrorCode,
    pub(super) message: String,
}

pub(super) async fn read(request: Request<Incoming>, limits: &Limits) -> Result<Bytes, Unread> {
    let max = limits.max_body;
    let too_large = || Unread {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        code: ErrorCode::TooLarge,
        message: format!("request body over this server's limit of {max} bytes"),
    };
    if request.body().size_hint().lower() > max as u64 {
        return Err(too_large());
    }
    match timeout(limits.idle, Limited::new(request.into_body(), max).collect()).await {
        Ok(Ok(body)) => Ok(body.to_bytes()),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Ok(Err(e)) => Err(Unread {
            status: StatusCode::BAD_REQUEST,
            code: ErrorCode::BadRequest,
            message: format!("reading the body: {e}"),
        }),
        Err(_) => Err(Unread {
            status: StatusCode::REQUEST_TIMEOUT,
            code: ErrorCode::Timeout,
            message: format!("the body did not arrive within {} ms", limits.idle.as_millis()),
        }),
    }
}
