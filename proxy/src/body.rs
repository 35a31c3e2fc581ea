//! Body types of the request path. Request bodies stream through untouched except for the
//! size limit; their errors are tagged as the downstream's fault so `errors` can answer 4xx
//! rather than blaming the upstream.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

/// What the proxy answers with: the upstream's stream, or a small synthetic body.
pub type ResponseBody = Either<Incoming, Full<Bytes>>;

pub fn full(b: impl Into<Bytes>) -> ResponseBody {
    Either::Right(Full::new(b.into()))
}

/// A failure of the downstream's request body: the client's fault.
#[derive(Debug, thiserror::Error)]
pub enum DownstreamBodyError {
    #[error("request body exceeds the limit of {0} bytes")]
    TooLarge(u64),
    #[error("malformed or interrupted request body: {0}")]
    Read(#[source] hyper::Error),
}

pin_project_lite::pin_project! {
    /// The body sent upstream.
    #[project = RequestBodyProj]
    pub enum RequestBody {
        /// No body (also what a retry of a body-less request sends).
        Empty,
        /// The downstream body, streamed, counting bytes against `remaining`.
        Stream { #[pin] inner: Incoming, remaining: u64 },
    }
}

impl RequestBody {
    pub fn limited(inner: Incoming, limit: u64) -> Self {
        RequestBody::Stream {
            inner,
            remaining: limit,
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = DownstreamBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.project() {
            RequestBodyProj::Empty => Poll::Ready(None),
            RequestBodyProj::Stream { inner, remaining } => match inner.poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        let n = data.len() as u64;
                        if n > *remaining {
                            return Poll::Ready(Some(Err(DownstreamBodyError::TooLarge(
                                *remaining,
                            ))));
                        }
                        *remaining -= n;
                    }
                    Poll::Ready(Some(Ok(frame)))
                }
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(DownstreamBodyError::Read(e)))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Empty => true,
            RequestBody::Stream { inner, .. } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Empty => SizeHint::with_exact(0),
            RequestBody::Stream { inner, .. } => inner.size_hint(),
        }
    }
}
